"""reaf.predict benchmark: seconds per scan on the CPU at full size, split into read, preprocess and encode.

python -m bench.bench_predict [--scans 2] [--repeats 2] [--threads N] [--workdir DIR] [--quick]
  -> bench/results/predict.json (--quick: bench/results/predict_quick.json)
The paper model (vit_base_singlescan_h2_token2744, random weights, input 112x336x336, fp32) with a tiny offline text
tower (the text side is encoded once per run, as prompts). Each scan is a CT-RATE-sized chest-like phantom
(512x512x300 int16 HU, 0.7x0.7x1.5 mm, LPS axes) as a NIfTI, and the same voxels as a DICOM series when
reaf.data.dicom exists (else skipped with a note). Per scan, as reaf.Predictor times it: read = file -> HU at 3x1x1 mm
(decode, HU, reorientation, trilinear resampling), preprocess = window, crop, normalise, encode = encode_image
(batch 1). --quick: the tiny model on a 160x160x60 scan, to check the script runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from bench.common import machine_info, make_ct_like, write_result
from reaf.data.input_spec import InputSpec
from reaf.evaluation.predictor import Predictor
from reaf.evaluation.scans import find_scans
from reaf.model.checkpoint import REFERENCE_MODEL
from reaf.model.clip import create_model
from reaf.model.text import builtin_vocab

FULL = {"model": REFERENCE_MODEL, "shape_zyx": (300, 512, 512), "spacing_zyx": (1.5, 0.7, 0.7)}
QUICK = {"model": "tiny", "shape_zyx": (60, 160, 160), "spacing_zyx": (1.5, 0.7, 0.7)}
TINY_TEXT = {"tokenizer": "builtin", "vocab_size": len(builtin_vocab()), "hidden_size": 48, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 96}


def write_nifti(path: Path, hu_zyx: np.ndarray, spacing_zyx: tuple[float, float, float]) -> None:
    """int16 HU in CT-RATE's voxel order (i, j, k) = (x, y, z) with an LPS affine, as a v2 ("_fixed") file."""
    affine = np.diag([-spacing_zyx[2], -spacing_zyx[1], spacing_zyx[0], 1.0])
    nib.save(nib.Nifti1Image(np.round(hu_zyx).astype(np.int16).transpose(2, 1, 0), affine), path)


def write_dicom(folder: Path, hu_zyx: np.ndarray, spacing_zyx: tuple[float, float, float]) -> None:
    """The same voxels as a CT series: one uncompressed file per axial slice, HU = raw - 1024, LPS positions."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    for z, plane in enumerate(hu_zyx):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{z:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", study, series, z + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, float(z * spacing_zyx[0])]
        ds.PixelSpacing = [spacing_zyx[1], spacing_zyx[2]]
        ds.SliceThickness = spacing_zyx[0]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.clip(np.round(plane + 1024), 0, 65535).astype("<u2").tobytes()
        ds.save_as(folder / f"{z:04d}.dcm", enforce_file_format=True)


def time_scans(predictor: Predictor, path: Path, repeats: int) -> dict:
    """Medians over `repeats` predictions of the scan at `path` of read / preprocess / encode / total seconds."""
    source = find_scans([path])
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        pred = next(iter(predictor.predict_many(source)))
        runs.append({**pred.timing, "total_s": time.perf_counter() - start})
    return {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]} | {"repeats": repeats}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--workdir", default=None, help="keeps the generated scans between runs")
    p.add_argument("--quick", action="store_true", help="tiny model and scan: checks that the script runs")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    setup = QUICK if args.quick else FULL
    info = machine_info()
    torch.manual_seed(0)
    model = create_model(setup["model"], **TINY_TEXT).eval()
    spec = InputSpec(model.cfg.vision.img_size, -1150.0, 350.0, "crop")
    start = time.perf_counter()
    predictor = Predictor(model, input_spec=spec, device="cpu")
    results: dict = {"prompts_s": round(time.perf_counter() - start, 3)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        hu = make_ct_like(setup["shape_zyx"])
        nifti = work / f"ct_{'x'.join(map(str, setup['shape_zyx']))}.nii.gz"
        if not nifti.exists():
            write_nifti(nifti, hu, setup["spacing_zyx"])
        results["nifti"] = time_scans(predictor, nifti, args.repeats)
        try:
            import reaf.data.dicom  # noqa: F401
        except ImportError:
            results["dicom"] = {"skipped": "reaf.data.dicom is absent in this checkout"}
        else:
            folder = work / f"dicom_{'x'.join(map(str, setup['shape_zyx']))}"
            if not folder.exists():
                write_dicom(folder, hu, setup["spacing_zyx"])
            results["dicom"] = time_scans(predictor, folder, args.repeats)
    result = {"benchmark": "predict", "command": " ".join(["python -m bench.bench_predict", *sys.argv[1:]]),
              "model": setup["model"], "text_tower": "tiny offline BERT (2 layers, hidden 48)",
              "input": spec.describe(), "scan": {"shape_zyx": list(setup["shape_zyx"]),
                                                 "spacing_zyx_mm": list(setup["spacing_zyx"]), "dtype": "int16 HU"},
              "precision": "fp32", "batch_size": 1, "results": results, "machine": info}
    name = "predict_quick" if args.quick else "predict"
    print(f"written {write_result(name, result)}: {results}")


if __name__ == "__main__":
    main()
