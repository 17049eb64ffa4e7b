"""Volume transforms and formats: geometry after resampling, HU without double rescaling, values, format equality."""

from __future__ import annotations

import gzip
import io
import json
import logging
import re

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reaf.data import transforms as T
from reaf.data.formats import (
    FORMATS,
    InputSpec,
    VolumeError,
    VolumeMeta,
    load_volume,
    nifti_to_hu,
    save_cache,
    save_stage1,
    save_stage2,
    volume_file,
)
from tests.support.volumes import (
    SPACING,
    chest_like,
    metadata_row,
    sphere,
    write_header_scaled,
    write_nifti,
    write_v1,
    write_v2,
)

META = VolumeMeta(xy_spacing=(SPACING[2], SPACING[1]), z_spacing=SPACING[0], slope=1.0, intercept=-1024.0)
SPEC = InputSpec((16, 48, 48), -1150, 350, "crop")


def test_sphere_keeps_size_and_position_in_mm(tmp_path):
    spacing, center, radius = (1.25, 0.7, 0.6), (31.0, 22.0, 20.0), 12.0
    hu = sphere((48, 62, 72), spacing, center, radius)
    path = write_nifti(tmp_path / "ball.nii.gz", hu, spacing)
    out, _ = nifti_to_hu(path, None)  # spacing from the header pixdim
    assert tuple(out.shape) == (20, 43, 43)  # 60, 43.4, 43.2 mm at 3 x 1 x 1 mm (round and floor agree)
    inside = (out > -400).numpy()  # half way between air and the ball
    idx = np.argwhere(inside)
    centroid_mm = (idx + 0.5).mean(0) * np.array(T.TARGET_SPACING)
    assert np.allclose(centroid_mm, center, atol=0.5), centroid_mm
    volume_mm3 = inside.sum() * np.prod(T.TARGET_SPACING)
    assert volume_mm3 == pytest.approx(4 / 3 * np.pi * radius**3, rel=0.08)
    extent = [(idx[:, a].max() - idx[:, a].min() + 1) * T.TARGET_SPACING[a] for a in range(3)]
    assert np.allclose(extent, 2 * radius, atol=T.TARGET_SPACING[0] * 1.01), extent


def trilinear(hu: np.ndarray, shape) -> torch.Tensor:
    """The chest phantom (24, 64, 72) at 2.5 x 1 x 0.8 mm on the 3 x 1 x 1 mm grid: 60 / 3 = 20 and 64 voxels on z and
    y; on x 57.6 mm gives 58 voxels when rounded, 57 when floored, so x is taken from the result and checked to be
    one of the two; the values are torch's trilinear interpolation (voxel centres kept, align_corners=False)."""
    assert tuple(shape[:2]) == (20, 64) and shape[2] in (57, 58)
    return F.interpolate(torch.from_numpy(hu.astype(np.float32))[None, None], size=tuple(shape), mode="trilinear",
                         align_corners=False)[0, 0]


def test_resample_keeps_a_linear_ramp_at_the_voxel_centres():
    """HU = 7 z - 3 y + 2 x (mm, at voxel centres (i + 0.5) * spacing) is linear, so trilinear resampling gives the
    ramp at the new centres: (j + 0.5) * 3 mm on z and (j + 0.5) * 1 mm on y and x. Spacings are exact binary
    fractions and extents whole multiples of the target, so the voxel counts are exact (10 x 1.5 / 3 = 5,
    12 x 0.5 = 6, 8 x 1.25 = 10). Downsampled axes (z, y) need no edge clamping; upsampled x clamps its first and
    last output voxel to the input's first and last centre (0.625 and 9.375 mm)."""
    shape, spacing = (10, 12, 8), (1.5, 0.5, 1.25)
    z, y, x = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    out = T.resample(torch.from_numpy(7 * z - 3 * y + 2 * x), spacing)
    assert tuple(out.shape) == (5, 6, 10) and out.dtype == torch.float32
    zc, yc = (np.arange(5) + 0.5) * 3.0, np.arange(6) + 0.5
    xc = np.clip(np.arange(10) + 0.5, 0.625, 9.375)
    zz, yy, xx = np.meshgrid(zc, yc, xc, indexing="ij")
    np.testing.assert_allclose(out.numpy(), 7 * zz - 3 * yy + 2 * xx, rtol=0, atol=1e-4)


def test_hu_identical_from_v1_v2_and_header_scaled(tmp_path, caplog):
    hu = chest_like()
    v1 = write_v1(tmp_path / "v1.nii.gz", hu)
    v2 = write_v2(tmp_path / "v2.nii.gz", hu)
    scl = write_header_scaled(tmp_path / "scl.nii.gz", hu)
    with caplog.at_level(logging.DEBUG, logger="reaf.data.formats"):
        a, da = nifti_to_hu(v1, META)
        b, db = nifti_to_hu(v2, META)  # the CSV slope/intercept must NOT be applied again
        c, dc = nifti_to_hu(scl, META)  # nibabel-style header scaling must not be doubled by the CSV
        d, dd = nifti_to_hu(v2, None)
    assert all(torch.allclose(a, x, rtol=0, atol=1e-3) for x in (b, c, d))  # float rounding of the affine only
    assert da.source.startswith("metadata CSV") and (da.slope, da.intercept) == (1.0, -1024.0)
    assert db.source == "stored values as HU" and dc.source == "header scl_slope/scl_inter"
    assert all(-1100 < x.air < -900 for x in (da, db, dc))
    assert "air at -2" in " ".join(db.rejected)  # the double rescale was considered and rejected
    assert str(v1) in caplog.text and "metadata CSV RescaleSlope/Intercept" in caplog.text
    assert torch.allclose(a, trilinear(hu, a.shape), rtol=0, atol=1e-3)


def test_hu_with_csv_slope_two(tmp_path):
    hu = chest_like() // 2 * 2
    path = write_nifti(tmp_path / "s2.nii.gz", (hu + 1024) / 2)
    meta = VolumeMeta((SPACING[2], SPACING[1]), SPACING[0], 2.0, -1024.0)
    out, decision = nifti_to_hu(path, meta)
    assert decision.slope == 2.0
    assert torch.allclose(out, trilinear(hu, out.shape), rtol=0, atol=1e-3)


def test_raw_values_without_slope_intercept_are_an_error(tmp_path):
    path = write_v1(tmp_path / "raw_no_csv.nii.gz", chest_like())
    with pytest.raises(VolumeError, match=r"raw_no_csv.*no HU interpretation.*no metadata slope/intercept"):
        load_volume(path, "ori", SPEC, None)


def test_window_crop_resize_normalize_values():
    hu = torch.tensor([-1150.0, -400.0, 350.0, 1000.0, -3000.0])
    assert torch.allclose(T.window(hu, -1150, 350), torch.tensor([0.0, 0.5, 1.0, 1.0, 0.0]))
    assert torch.allclose(T.normalize(torch.tensor([0.0, 1.0])), torch.tensor([-0.449 / 0.226, 0.551 / 0.226]))
    x = torch.arange(3 * 4 * 5, dtype=torch.float32).reshape(3, 4, 5) + 1
    y = T.pad_crop(x, (5, 2, 7))
    assert y.shape == (5, 2, 7)
    assert y[0].abs().sum() == 0 and y[4].abs().sum() == 0  # z padded 1 before, 1 after
    assert torch.equal(y[1:4, :, 1:6], x[:, 1:3, :])  # y centre-cropped from 1, x padded 1 + 1
    assert y[:, :, 0].abs().sum() == 0 and y[:, :, 6].abs().sum() == 0
    ramp = torch.tensor([0.0, 1.0]).reshape(1, 1, 2).expand(2, 2, 2).contiguous()
    r = T.resize(ramp, (2, 2, 4))
    assert torch.allclose(r[0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    hu3 = torch.full((20, 40, 40), -400.0)
    out = T.model_input(hu3, (16, 48, 48), -1150, 350, "crop")
    assert out.shape == (1, 16, 48, 48) and out.dtype == torch.float32
    assert out[0, 8, 24, 24] == pytest.approx((0.5 - 0.449) / 0.226)
    assert out[0, 8, 24, 0] == pytest.approx(-0.449 / 0.226)  # padding is window value 0


@pytest.mark.parametrize("mode", ["crop", "resize"])
def test_all_formats_give_the_same_model_input(tmp_path, mode):
    spec = InputSpec((16, 48, 48), -1150, 350, mode)
    src = write_v1(tmp_path / "vol.nii.gz", chest_like())
    ori = load_volume(src, "ori", spec, META)
    assert ori.shape == (1, 16, 48, 48) and ori.dtype == torch.float32
    hu, _ = nifti_to_hu(src, META)
    windowed = ((hu + 1150.0) / 1500.0).clamp(0, 1)  # the window [-1150, 350] HU written out
    if mode == "crop":  # every axis of (20, 64, 57|58) is larger than (16, 48, 48): centre crop, offset (n - s) // 2
        z0, y0, x0 = 2, 8, (hu.shape[2] - 48) // 2
        fitted = windowed[z0:z0 + 16, y0:y0 + 48, x0:x0 + 48]
    else:
        fitted = F.interpolate(windowed[None, None], size=(16, 48, 48), mode="trilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(ori[0], (fitted - 0.449) / 0.226, atol=1e-5, rtol=0)
    save_stage1(volume_file(tmp_path, "vol", "stage1"), hu)
    save_stage2(volume_file(tmp_path, "vol", "stage2"), ori)
    save_stage2(tmp_path / "vol16.pt.gz", ori, torch.float16)
    save_cache(volume_file(tmp_path, "vol", "cache"), T.fit(T.window(hu, -1150, 350), spec.size, mode), spec)
    assert torch.equal(load_volume(volume_file(tmp_path, "vol", "stage1"), "stage1", spec), ori)
    assert torch.equal(load_volume(volume_file(tmp_path, "vol", "stage2"), "stage2", spec), ori)
    half = load_volume(tmp_path / "vol16.pt.gz", "stage2", spec)
    assert half.dtype == torch.float32 and torch.allclose(half, ori, atol=2e-3)
    cache = load_volume(volume_file(tmp_path, "vol", "cache"), "cache", spec)
    step = 1 / (4095 * T.STD)  # the cache's stated precision: half a quantisation step
    assert cache.dtype == torch.float32 and (cache - ori).abs().max() <= step / 2 + 1e-5
    assert (cache - ori).abs().max() > 0  # it really is quantised, not a copy
    assert volume_file(tmp_path, "vol", "ori") == src


def test_stored_shape_or_window_mismatch_is_an_error(tmp_path):
    save_stage2(tmp_path / "s.pt.gz", torch.zeros(1, 16, 48, 40))
    with pytest.raises(VolumeError, match=r"s\.pt\.gz.*\(1, 16, 48, 40\).*\(1, 16, 48, 48\)"):
        load_volume(tmp_path / "s.pt.gz", "stage2", SPEC)
    save_cache(tmp_path / "c.vol.zst", torch.zeros(16, 48, 48), SPEC)
    other = InputSpec((16, 48, 40), -1150, 350, "crop")
    with pytest.raises(VolumeError, match=r"c\.vol\.zst.*\(1, 16, 48, 48\).*\(1, 16, 48, 40\)"):
        load_volume(tmp_path / "c.vol.zst", "cache", other)
    with pytest.raises(VolumeError, match=r"c\.vol\.zst.*written for.*-1000"):
        load_volume(tmp_path / "c.vol.zst", "cache", InputSpec((16, 48, 48), -1000, 350, "crop"))


def test_input_spec_and_names():
    spec = InputSpec.from_args(["-1000", "400", "resize"], (32, 96, 96))
    assert (spec.hu_min, spec.hu_max, spec.mode, spec.size) == (-1000.0, 400.0, "resize", (32, 96, 96))
    assert InputSpec.from_args(None, (1, 2, 3)) == InputSpec((1, 2, 3), -1150.0, 350.0, "crop")
    with pytest.raises(ValueError, match="crop or resize"):
        InputSpec.from_args(["-1000", "400", "zoom"], (32, 96, 96))
    with pytest.raises(ValueError, match="MIN < MAX"):
        InputSpec.from_args(["400", "-1000", "crop"], (32, 96, 96))
    assert set(FORMATS) == {"ori", "stage1", "stage2", "cache"}
    assert metadata_row("x")["XYSpacing"] == "[0.8, 1.0]"


def _truncated(path):
    data = gzip.compress(b"\0" * 348 + np.zeros(10000, np.int16).tobytes())
    path.write_bytes(data[: len(data) // 2])


def _stage1_wrong(path):
    buf = io.BytesIO()
    torch.save(torch.zeros(4, 4), buf)
    path.write_bytes(buf.getvalue())


BAD_LOADS = {
    "corrupt_gzip": (
        "ori",
        lambda p: p.write_bytes(b"\x1f\x8b\x08\x00garbage" * 10),
        r"(?i)gzip|crc|decompress|header",
    ),
    "truncated_gzip": ("ori", _truncated, r"(?i)ended before|eof|truncat|compressed file"),
    "not_nifti": (
        "ori",
        lambda p: p.write_bytes(gzip.compress(b"VolumeName,Findings\n" * 50)),
        r"(?i)nifti|header|size",
    ),
    "two_d": ("ori", lambda p: nib.save(nib.Nifti1Image(np.zeros((64, 64), np.int16), np.eye(4)), p), r"3-D volume"),
    "four_d": (
        "ori",
        lambda p: nib.save(nib.Nifti1Image(np.zeros((24, 24, 3, 2), np.int16), np.eye(4)), p),
        r"3-D volume, got shape \(24, 24, 3, 2\)",
    ),  # fmt: skip
    "nan": (
        "ori",
        lambda p: write_nifti(p, np.where(chest_like() > 500, np.nan, chest_like()), dtype=np.float32),
        r"\d+ NaN/inf voxels",
    ),  # fmt: skip
    "too_small": ("ori", lambda p: write_v2(p, chest_like((6, 20, 20))), r"too small for the crop"),
    "stage1_2d": ("stage1", _stage1_wrong, r"3-D float HU tensor"),
    "missing": ("stage2", lambda p: None, r"not found"),
}


@pytest.mark.parametrize("case", sorted(BAD_LOADS))
def test_bad_volume_files_name_the_file_and_cause(tmp_path, case):
    fmt, make, cause = BAD_LOADS[case]
    path = tmp_path / f"bad_{case}{FORMATS[fmt]}"
    make(path)
    with pytest.raises(VolumeError) as err:
        load_volume(path, fmt, SPEC, None)
    assert str(path) in str(err.value)
    assert re.search(cause, str(err.value)), str(err.value)


@pytest.mark.parametrize(
    "shape, spacing, expected",
    [
        ((175, 512, 512), (2.0, 0.65, 0.65), (116, 332, 332)),  # 116.67 and 332.8: truncated, as the reference
        ((100, 7, 9), (3.0, 1.0, 1.0), (100, 7, 9)),  # already on the grid
        ((33, 300, 301), (1.5, 0.5, 0.5), (16, 150, 150)),  # 16.5 and 150.5
        ((1, 1, 1), (0.5, 0.5, 0.5), (1, 1, 1)),  # never below one voxel
    ],
)
def test_resampled_shape_is_the_reference_grid(shape, spacing, expected):
    """Hand-computed int(n * spacing / target) per axis: the grid HLIP's process.py and the reference's ori loader
    build, which the released weights were trained on (a rounding grid gives 117 and 333 for the first case)."""
    assert T.resampled_shape(shape, spacing) == expected
    assert tuple(T.resample(torch.zeros(shape), spacing).shape) == expected


def test_implausible_spacing_or_size_is_refused_before_allocating():
    with pytest.raises(ValueError, match=r"\(3, 1, 1000\) mm is outside the plausible \(0.05, 20\] mm"):
        T.resample(torch.zeros(4, 4, 4), (3.0, 1.0, 1000.0))
    with pytest.raises(ValueError, match="outside the plausible"):
        T.resample(torch.zeros(4, 4, 4), (3.0, 0.01, 1.0))
    huge = torch.zeros(1).expand(2000, 4000, 4000)  # no memory behind it: the check must come first
    with pytest.raises(ValueError, match=r"resample to \(2000, 2000, 2000\) .* more than the budget"):
        T.resample(huge, (3.0, 0.5, 0.5))


def test_a_cache_of_the_old_grid_is_refused_naming_the_file(tmp_path):
    spec = InputSpec((8, 16, 16), mode="resize")
    path = tmp_path / "v.vol.zst"
    save_cache(path, torch.rand(spec.size), spec)
    data = path.read_bytes()
    n = int.from_bytes(data[8:12], "little")
    header = json.loads(data[12 : 12 + n])
    assert header["grid"] == T.RESAMPLE_GRID
    del header["grid"]  # what a cache written before the grid was recorded holds
    old = json.dumps(header).encode()
    path.write_bytes(data[:8] + len(old).to_bytes(4, "little") + old + data[12 + n :])
    with pytest.raises(VolumeError, match=re.escape(f"{path}: cache written with another resampling grid")):
        load_volume(path, "cache", spec)
