"""CT-RATE metadata CSV rows for synthetic volumes: the published column list, true spacing, plausible constants."""

from __future__ import annotations

from reaf.synthetic.findings import stream
from reaf.synthetic.phantom import Geometry

# The column list of CT-RATE's dataset/metadata/{train,validation}_metadata.csv, in order.
METADATA_COLUMNS = [
    "VolumeName", "Manufacturer", "SeriesDescription", "ManufacturerModelName", "PatientSex", "PatientAge",
    "ReconstructionDiameter", "DistanceSourceToDetector", "DistanceSourceToPatient", "GantryDetectorTilt",
    "TableHeight", "RotationDirection", "ExposureTime", "XRayTubeCurrent", "Exposure", "FilterType", "GeneratorPower",
    "FocalSpots", "ConvolutionKernel", "PatientPosition", "RevolutionTime", "SingleCollimationWidth",
    "TotalCollimationWidth", "TableSpeed", "TableFeedPerRotation", "SpiralPitchFactor", "DataCollectionCenterPatient",
    "ReconstructionTargetCenterPatient", "ExposureModulationType", "CTDIvol", "ImagePositionPatient",
    "ImageOrientationPatient", "SliceLocation", "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns",
    "XYSpacing", "RescaleIntercept", "RescaleSlope", "RescaleType", "NumberofSlices", "ZSpacing", "StudyDate",
]  # fmt: skip
SCANNERS = [("Philips", "iCT 256", "YA"), ("SIEMENS", "SOMATOM Definition Edge", "Br40f"),
            ("TOSHIBA", "Aquilion ONE", "FC08"), ("GE MEDICAL SYSTEMS", "Revolution CT", "LUNG")]  # fmt: skip


def metadata_row(seed: int, volume_file: str, patient_id: str, scan_id: str, geometry: Geometry,
                 intercept: float, slope: float) -> dict:  # fmt: skip
    """One metadata row; spacing, size and rescale are the volume's true values, the rest plausible constants."""
    person, scan = stream(seed, patient_id, 1), stream(seed, scan_id, 2)
    sex, age = ("M", "F")[int(person.integers(2))], int(person.integers(25, 86))
    maker, model, kernel = SCANNERS[int(scan.integers(len(SCANNERS)))]
    date = f"20{int(scan.integers(18, 22))}{int(scan.integers(1, 13)):02d}{int(scan.integers(1, 29)):02d}"
    (nx, ny, nz), (sx, sy, sz) = geometry.shape, geometry.spacing
    current = int(scan.integers(80, 300))
    z0 = round(-(nz - 1) / 2 * sz, 4)
    return {
        "VolumeName": volume_file, "Manufacturer": maker, "SeriesDescription": "CHEST", "ManufacturerModelName": model,
        "PatientSex": sex, "PatientAge": f"{age:03d}Y", "ReconstructionDiameter": round(nx * sx, 3),
        "DistanceSourceToDetector": 1040.0, "DistanceSourceToPatient": 570.0, "GantryDetectorTilt": 0,
        "TableHeight": int(scan.integers(120, 180)), "RotationDirection": "CW", "ExposureTime": 500,
        "XRayTubeCurrent": current, "Exposure": current // 2, "FilterType": "BODY", "GeneratorPower": 24000,
        "FocalSpots": 1.2, "ConvolutionKernel": kernel, "PatientPosition": "HFS", "RevolutionTime": 0.5,
        "SingleCollimationWidth": 0.625, "TotalCollimationWidth": 40.0, "TableSpeed": 78.75,
        "TableFeedPerRotation": 39.375, "SpiralPitchFactor": 0.984375, "DataCollectionCenterPatient": "",
        "ReconstructionTargetCenterPatient": "", "ExposureModulationType": "Z DOM",
        "CTDIvol": round(float(scan.uniform(3, 12)), 6),
        "ImagePositionPatient": f"[{-(nx - 1) / 2 * sx:g}, {-(ny - 1) / 2 * sy:g}, {z0:g}]",
        "ImageOrientationPatient": "[1, 0, 0, 0, 1, 0]", "SliceLocation": z0, "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2", "Rows": ny, "Columns": nx, "XYSpacing": f"[{sx!r}, {sy!r}]",
        "RescaleIntercept": int(intercept) if float(intercept).is_integer() else intercept,
        "RescaleSlope": int(slope) if float(slope).is_integer() else slope, "RescaleType": "HU",
        "NumberofSlices": nz, "ZSpacing": sz, "StudyDate": int(date),
    }  # fmt: skip
