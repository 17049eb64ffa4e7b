"""reaf.predict on NIfTI scans: the probabilities zero_shot.py gives for the same volumes and weights, embeddings
reaf.search reads, kept regions mapped back to the scan's own voxels and affine, token maps, inputs found in
folders and CSVs, and unreadable scans stopping the run with one line or listed under --skip-bad."""

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from reaf import Predictor, create_model
from reaf.data import transforms as T
from reaf.data.csv_tables import CLASSES
from reaf.data.formats import read_nifti
from reaf.data.input_spec import InputSpec
from reaf.evaluation.encoding import encode_texts
from reaf.evaluation.saliency_map import grid_to_voxels, saliency_image
from reaf.evaluation.scans import ScanError, find_scans, read_geometry, read_hu
from reaf.exit_status import run_cli
from reaf.export import main as export_main
from reaf.predict import main as predict_main
from tests.support.evaluation import tiny_checkpoint

NAMES = ["valid_1_a_1", "valid_2_a_1", "valid_3_a_1", "valid_4_a_1"]
RESIZE = ["--input-info", "-1150", "350", "resize"]


def write_scan(path, seed, shape=(100, 90, 16), zooms=(1.0, 1.0, 5.0), codes="LPS"):
    """An int16 HU NIfTI: air around a noisy body box with a bright spot; axes stated as `codes` (LPS or RAS)."""
    rng = np.random.default_rng(seed)
    data = rng.normal(-1000, 15, shape)
    body = tuple(slice(int(n * f), n - int(n * f)) for n, f in zip(shape, (0.15, 0.15, 0.1)))
    data[body] = rng.normal(20, 120, data[body].shape)
    centre = rng.integers([30, 30, 4], [shape[0] - 30, shape[1] - 30, shape[2] - 4])
    data[tuple(slice(c - 5, c + 5) for c in centre)] = 900
    signs = (-1.0, -1.0) if codes == "LPS" else (1.0, 1.0)
    affine = np.diag([signs[0] * zooms[0], signs[1] * zooms[1], zooms[2], 1.0])
    affine[:3, 3] = (12.0, -30.0, -200.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.int16), affine), path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model's checkpoint and weights folder, and a layout-B split of NIfTI scans with reports and labels."""
    root = tmp_path_factory.mktemp("predict")
    model, ckpt = tiny_checkpoint(root)
    export_main([str(ckpt), "--out", str(root / "weights")])
    split = root / "test"
    for n, name in enumerate(NAMES):
        write_scan(split / "volumes" / f"{name}.nii.gz", seed=n, codes="RAS" if n % 2 else "LPS")
    (split / "reports").mkdir()
    (split / "reports" / "reports.json").write_text(json.dumps({n: f"Findings: case {n}." for n in NAMES}))
    labels = pd.DataFrame(np.random.default_rng(0).integers(0, 2, (len(NAMES), len(CLASSES))), columns=CLASSES)
    labels.insert(0, "VolumeName", [f"{n}.nii.gz" for n in NAMES])
    labels.to_csv(split / "labels.csv", index=False)
    return model, ckpt, root / "weights", split


def test_probabilities_equal_zero_shot_and_search_reads_the_embeddings(setup, tmp_path, capsys):
    import zero_shot

    model, ckpt, weights, split = setup
    assert zero_shot.main(["--resume", str(weights), "--zeroshot-ct-rate", str(split), "--input-data-type", "ori",
                           *RESIZE, "--results-dir", str(tmp_path / "zs"), "--batch-size", "2", "--workers", "0",
                           "--device", "cpu", "--bootstrap", "10", "--no-plots"]) == 0
    expected = pd.read_csv(tmp_path / "zs" / "probabilities.csv").set_index("VolumeName")
    expected = expected[[f"volume:{c}" for c in CLASSES]].loc[NAMES].to_numpy()
    assert np.ptp(expected, axis=0).max() > 1e-5  # the volumes differ by far more than the tolerance below
    for source in (ckpt, weights):
        out = tmp_path / f"out_{source.name}"
        assert predict_main([str(split / "volumes"), "--model", str(source), "--out", str(out), *RESIZE,
                             "--batch-size", "2", "--device", "cpu"]) == 0
        table = pd.read_csv(out / "predictions.csv")
        assert list(table.columns) == ["source", *CLASSES, "error"]
        assert table["source"].tolist() == [str(split / "volumes" / f"{n}.nii.gz") for n in NAMES]
        assert np.abs(table[CLASSES].to_numpy() - expected).max() <= 1e-9  # the same arithmetic: equal to the digit
    printed = capsys.readouterr().out
    assert "4 scan(s) predicted, 0 skipped" in printed and "valid_1_a_1.nii.gz" in printed

    from reaf.search import main as search_main

    store = out / "embeddings.pt"
    assert search_main(["--embeddings", str(store), "--query", "bilateral pleural effusion", "-k", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "4 volumes" in lines[0]
    query = encode_texts(model, ["bilateral pleural effusion"], batch_size=1, device="cpu")[0]
    image = np.stack([Predictor(model, input_info=RESIZE[1:]).predict(p).embedding for p in table["source"]])
    order = np.argsort(-(image @ query), kind="stable")
    assert [line.split()[2] for line in lines[1:]] == table["source"][order].tolist()
    with pytest.raises(ValueError, match="holds no reports"):
        search_main(["--embeddings", str(store), "--volume", NAMES[0]])


def test_a_dicom_series_predicts_as_its_nifti_and_as_zero_shot(setup, tmp_path):
    """The same voxels and geometry as a NIfTI file and as a DICOM series (one file per slice, shuffled names)
    give the same probabilities, and those equal zero_shot.py's for that volume; one file of a series, in a folder
    holding two, stands for its own series."""
    import zero_shot

    pytest.importorskip("pydicom")
    from tests.support.dicom import write_series

    pydicom = pytest.importorskip("pydicom")
    model, ckpt, weights, split = setup
    assert zero_shot.main(["--resume", str(ckpt), "--zeroshot-ct-rate", str(split), "--input-data-type", "ori",
                           *RESIZE, "--results-dir", str(tmp_path / "zs"), "--batch-size", "2", "--workers", "0",
                           "--device", "cpu", "--bootstrap", "10", "--no-plots"]) == 0
    expected = pd.read_csv(tmp_path / "zs" / "probabilities.csv").set_index("VolumeName")
    by_series = {}
    for name in NAMES[:2]:  # one LPS and one RAS NIfTI
        image = nib.load(split / "volumes" / f"{name}.nii.gz")
        series = tmp_path / "dicom" / name
        write_series(series, np.asarray(image.dataobj).astype(np.int16), image.affine)
        found = {}
        for source in (split / "volumes" / f"{name}.nii.gz", series):
            out = tmp_path / f"out_{source.name}"
            assert predict_main([str(source), "--model", str(ckpt), "--out", str(out), *RESIZE, "--device", "cpu"]) == 0
            found[source.suffix] = pd.read_csv(out / "predictions.csv")[CLASSES].to_numpy()[0]
        zero_shot_row = expected.loc[name, [f"volume:{c}" for c in CLASSES]].to_numpy(dtype=float)
        assert np.abs(found[".gz"] - found[""]).max() <= 1e-4, name
        assert np.abs(found[""] - zero_shot_row).max() <= 1e-4, name
        by_series[name] = found[""]
    mixed = tmp_path / "mixed"  # both series in one folder: one file given picks its own series
    mixed.mkdir()
    for name in NAMES[:2]:
        for path in sorted((tmp_path / "dicom" / name).iterdir()):
            shutil.copy(path, mixed / f"{name}_{path.name}")
    one = sorted(mixed.glob(f"{NAMES[1]}_*"))[0]
    assert predict_main([str(one), "--model", str(ckpt), "--out", str(tmp_path / "one"), *RESIZE,
                         "--device", "cpu"]) == 0
    table = pd.read_csv(tmp_path / "one" / "predictions.csv")
    uid = str(pydicom.dcmread(one, stop_before_pixels=True).SeriesInstanceUID)
    assert table["source"].tolist() == [f"{mixed}#{uid}"]
    assert np.array_equal(table[CLASSES].to_numpy()[0], by_series[NAMES[1]])
    with pytest.raises(ScanError, match=f"belongs to series {uid}, not the --series 1.2.3 asked for"):
        find_scans([one], series="1.2.3")


def pushed_forward(image, spec, folder):
    """A label NIfTI read as a scan is (reoriented by its header), resampled to 3x1x1 mm and fitted to the input."""
    path = folder / "label.nii.gz"
    nib.save(image, path)
    stored, _, spacing = read_nifti(path, "header")
    forward = T.resample(torch.from_numpy(stored.astype(np.float32)), spacing)
    return T.pad_crop(forward, spec.size) if spec.mode == "crop" else T.resize(forward, spec.size)


def settled(expected, window, pad):
    """Voxels whose `window`-neighbourhood holds one value, outside `pad` planes of z padding at each end."""
    low = -F.max_pool3d(-expected[None, None], window, 1, window // 2)[0, 0]
    check = low == F.max_pool3d(expected[None, None], window, 1, window // 2)[0, 0]
    check[:pad], check[check.shape[0] - pad:] = False, False
    return check


def upsample(grid):
    return grid.repeat_interleave(8, 0).repeat_interleave(16, 1).repeat_interleave(16, 2)  # tiny's patch size


@pytest.mark.parametrize(("mode", "slices", "z_mm", "window"), [("crop", 26, 3.0, 1), ("crop", 20, 4.5, 3),
                                                                 ("resize", 20, 4.5, 5)])
def test_token_maps_land_in_the_scans_own_voxels(tmp_path, mode, slices, z_mm, window):
    """A token map mapped to the input's voxels, pushed forward through reading (an RAS scan is flipped to CT-RATE's
    order), 3x1x1 mm resampling and the crop|resize fit, gives the token map back: exactly where nothing resamples
    it (3 mm slices, crop), else wherever a `window`-voxel neighbourhood holds one token's value."""
    path = write_scan(tmp_path / "ras.nii.gz", seed=7, shape=(110, 100, slices), zooms=(1.0, 1.0, z_mm), codes="RAS")
    spec = InputSpec((32, 96, 96), -1150, 350, mode)
    source = find_scans([path])[0]
    geometry = read_geometry(source)
    grid = np.random.default_rng(0).integers(0, 4, (4, 6, 6)).astype(np.uint8)
    label = grid_to_voxels(grid, geometry, tuple(read_hu(source).shape), spec, (8, 16, 16))
    image = saliency_image(label, geometry)
    assert image.shape == nib.load(path).shape and np.allclose(image.affine, nib.load(path).affine)
    expected = upsample(torch.from_numpy(grid).float())
    check = settled(expected, window, (32 - round(slices * z_mm / 3)) // 2 if mode == "crop" else 0)
    assert check.sum() > 0.4 * check.numel()
    assert torch.allclose(pushed_forward(image, spec, tmp_path)[check], expected[check], atol=1e-4)


def test_predicted_kept_regions_and_tokens(tmp_path):
    """Predictor's hooks record the regions trunk.saliency_masks gives and the final normed patch tokens, without
    changing the embedding; the kept regions land in the scan's own voxels (exact case: 3 mm slices, crop)."""
    torch.manual_seed(0)
    model = create_model("tiny", region_size=(1, 1, 1), top_k=4).eval()
    path = write_scan(tmp_path / "ras.nii.gz", seed=7, shape=(110, 100, 26), zooms=(1.0, 1.0, 3.0), codes="RAS")
    spec = InputSpec((32, 96, 96), -1150, 350, "crop")
    predictor = Predictor(model, input_spec=spec)
    pred = predictor.predict(path, saliency=True, tokens=True)
    item = predictor.prepare(find_scans([path])[0], "ras", saliency=False)
    trunk = model.visual.trunk
    with torch.no_grad():
        masks = trunk.saliency_masks(item.volume[None])
        assert np.array_equal(pred.embedding, model.encode_image(item.volume[None])[0].numpy())
        last, outputs = trunk.run_blocks(trunk.embed(item.volume[None]))
        tokens = trunk.norm(last + trunk.added_vector(outputs)[:, None])[0, 1:].reshape(*trunk.grid, -1)
    assert torch.equal(pred.tokens, tokens)
    for level in ("scan", "slice"):
        assert np.array_equal(pred.saliency_grid[level], masks[level][0].numpy())
    expected = upsample(torch.from_numpy(masks["scan"][0].numpy() * 1 + masks["slice"][0].numpy() * 2).float())
    check = settled(expected, 1, 3)
    assert (expected[check] > 0).any() and torch.equal(pushed_forward(pred.saliency, spec, tmp_path)[check], expected[check])


def test_inputs_from_folders_and_csv(tmp_path):
    a = write_scan(tmp_path / "data" / "a.nii.gz", seed=1)
    b = write_scan(tmp_path / "data" / "sub" / "b.nii", seed=2)
    series = tmp_path / "data" / "sub" / "series1"
    series.mkdir()
    pydicom = pytest.importorskip("pydicom")
    shutil.copy(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm", series / "IM0001")
    (tmp_path / "data" / "notes.txt").write_text("not a scan")
    found = find_scans([tmp_path / "data"])
    assert [(s.path, s.kind) for s in found] == [(a, "nifti"), (b, "nifti"), (series, "dicom")]
    assert found[1].stem == "b"
    (tmp_path / "list.csv").write_text(f"path,comment\ndata/a.nii.gz,x\n{series},y\ndata/a.nii.gz,again\n")
    listed = find_scans([tmp_path / "list.csv"], series="1.2.3")
    assert [(s.path, s.kind, s.series) for s in listed] == [(a, "nifti", None), (series, "dicom", "1.2.3")]
    assert listed[1].label == f"{series}#1.2.3"
    (tmp_path / "bad.csv").write_text("file\na.nii.gz\n")
    for inputs, cause in (([tmp_path / "missing.nii.gz"], "no such file or folder"), ([tmp_path / "bad.csv"],
                          "no 'path' column"), ([tmp_path / "data" / "notes.txt"], "not a NIfTI file")):
        with pytest.raises(ScanError, match=cause):
            find_scans(inputs)


def test_unreadable_scan_one_line_error_or_listed_with_skip_bad(setup, tmp_path, capsys):
    _, ckpt, _, split = setup
    good = split / "volumes" / f"{NAMES[0]}.nii.gz"
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(good.read_bytes()[:300])
    argv = [str(good), str(bad), "--model", str(ckpt), "--out", str(tmp_path / "out"), *RESIZE, "--saliency",
            "--tokens"]
    assert run_cli("python -m reaf.predict", lambda: predict_main(argv)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"python -m reaf.predict: error: {bad}: ") and "gzip" in err
    assert not (tmp_path / "out" / "predictions.csv").exists()
    assert predict_main([*argv, "--skip-bad"]) == 0
    assert "1 scan(s) predicted, 1 skipped (unreadable)" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert table["error"][0] == "" and table["error"][1].startswith(f"{bad}: ")
    assert table.loc[1, CLASSES].eq("").all() and table.loc[0, CLASSES].astype(float).between(0, 1).all()
    name = NAMES[0]
    saliency = nib.load(tmp_path / "out" / "saliency" / f"{name}.nii.gz")
    assert saliency.shape == nib.load(good).shape and np.allclose(saliency.affine, nib.load(good).affine)
    assert (tmp_path / "out" / "saliency" / f"{name}.png").stat().st_size > 1000
    assert load_file(tmp_path / "out" / "tokens" / f"{name}.safetensors")["tokens"].shape == (4, 6, 6, 48)


def test_ct_rate_v1_files_predict_with_their_metadata_csv_as_layout_a_reads_them(setup, tmp_path, capsys):
    """CT-RATE v1 files store raw values (HU + 1024) under an identity affine; slope/intercept and spacing live only in
    the metadata CSV. With --metadata predict reads them as zero_shot.py reads layout A; a v2 copy listed in the same
    CSV keeps its own HU (the CSV's intercept would put its air at -2000); without it the error says what to give."""
    import zero_shot
    from reaf.synthetic.dataset import write_volume_nifti
    from tests.support.volumes import chest_like, metadata_row

    _, _, weights, _ = setup
    root, names = tmp_path / "ct_rate", ["valid_1_a_1", "valid_2_a_1", "valid_3_a_1"]
    spacings = [(2.5, 0.8, 0.8), (1.5, 0.7, 0.7), (2.0, 0.75, 0.75)]  # (z, y, x) mm
    for n, (name, spacing) in enumerate(zip(names, spacings)):
        folder = "valid_fixed" if n == 2 else "valid"
        path = root / "dataset" / folder / name[:-4] / name[:-2] / f"{name}.nii.gz"
        write_volume_nifti(path, chest_like((24, 64, 72), seed=n).transpose(2, 1, 0), spacing[::-1],
                           version="v2" if n == 2 else "v1", intercept=-1024.0, slope=1.0)
    tables = {"metadata/validation_metadata.csv": pd.DataFrame([metadata_row(n, s) for n, s in zip(names, spacings)]),
              "radiology_text_reports/validation_reports.csv": pd.DataFrame(
                  {"VolumeName": [f"{n}.nii.gz" for n in names], "Findings_EN": "Clear.", "Impressions_EN": "None."}),
              "multi_abnormality_labels/valid_predicted_labels.csv": pd.DataFrame(
                  np.random.default_rng(1).integers(0, 2, (3, len(CLASSES))), columns=CLASSES)}
    labels = tables["multi_abnormality_labels/valid_predicted_labels.csv"]
    labels.insert(0, "VolumeName", [f"{n}.nii.gz" for n in names])
    for rel, table in tables.items():
        (root / "dataset" / rel).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(root / "dataset" / rel, index=False)
    metadata = root / "dataset" / "metadata" / "validation_metadata.csv"
    assert zero_shot.main(["--resume", str(weights), "--data-root", str(root), "--input-data-type", "ori", *RESIZE,
                           "--zeroshot-ct-rate", str(root / "dataset" / "multi_abnormality_labels" /
                                                     "valid_predicted_labels.csv"),
                           "--results-dir", str(tmp_path / "zs"), "--batch-size", "3", "--workers", "0",
                           "--device", "cpu", "--bootstrap", "10", "--no-plots"]) == 0
    expected = pd.read_csv(tmp_path / "zs" / "probabilities.csv").set_index("VolumeName")
    expected = expected[[f"volume:{c}" for c in CLASSES]].loc[names].to_numpy()
    assert np.ptp(expected, axis=0).max() > 1e-5

    out = tmp_path / "out"  # one batch of 3 on both sides: the same arithmetic
    argv = [str(root / "dataset"), "--model", str(weights), "--out", str(out), *RESIZE, "--batch-size", "3",
            "--device", "cpu"]
    assert predict_main([*argv, "--metadata", str(metadata)]) == 0
    table = pd.read_csv(out / "predictions.csv")
    assert [p.split("/")[-1] for p in table["source"]] == [f"{n}.nii.gz" for n in names]
    assert np.abs(table[CLASSES].to_numpy() - expected).max() <= 1e-9
    assert torch.load(out / "embeddings.pt", weights_only=False)["meta"]["data"]["metadata"] == [str(metadata)]
    v2 = find_scans([root / "dataset" / "valid_fixed"])[0]
    with_row = find_scans([v2.path], metadata=[metadata])[0]
    assert v2.meta is None and with_row.meta.intercept == -1024.0 and with_row == v2
    assert torch.equal(read_hu(with_row), read_hu(v2))  # the CSV row gives the same spacing; its intercept is refused
    capsys.readouterr()

    assert run_cli("python -m reaf.predict", lambda: predict_main(argv)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    first = root / "dataset" / "valid" / "valid_1" / "valid_1_a" / "valid_1_a_1.nii.gz"
    assert err.startswith(f"python -m reaf.predict: error: {first}: no HU interpretation puts air in")
    assert err.endswith("give its metadata CSV (predict --metadata, find_scans(metadata=...))")
    missing = metadata.with_name("train_metadata.csv")
    assert run_cli("python -m reaf.predict", lambda: predict_main([*argv, "--metadata", str(missing)])) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"python -m reaf.predict: error: {missing}: metadata CSV not found (layout A needs it for spacing " \
                  "and slope/intercept)"


def test_scans_without_a_metadata_row_are_named_in_a_warning(tmp_path, caplog):
    from tests.support.volumes import metadata_row

    scans = [write_scan(tmp_path / f"{name}.nii.gz", seed=n) for n, name in enumerate(["listed", "own_1", "own_2"])]
    table = tmp_path / "meta.csv"
    pd.DataFrame([metadata_row("listed")]).to_csv(table, index=False)
    with caplog.at_level("INFO", logger="reaf.evaluation.scans"):
        found = find_scans(scans, metadata=[table])
    assert [s.meta is not None for s in found] == [True, False, False]
    assert "metadata CSV rows for 1 of 3 NIfTI scan(s)" in caplog.text
    assert f"2 NIfTI scan(s) have no row in {table} and are read from their headers alone: {scans[1]}, {scans[2]}" \
        in caplog.text
    other = tmp_path / "other.csv"
    pd.DataFrame([metadata_row("listed", intercept=0.0)]).to_csv(other, index=False)
    with pytest.raises(ScanError, match=f"^{table} and {other}: two different metadata rows for listed$"):
        find_scans(scans, metadata=[table, other])


def test_evaluations_default_to_the_input_the_checkpoint_records(setup, tmp_path):
    """A checkpoint trained with --input-info -1150 350 resize is evaluated on that input when no --input-info is
    given (zero_shot.py, reaf.probe's settings, reaf.predict), not on the -1150 350 crop defaults."""
    import zero_shot
    from reaf.data.input_spec import input_spec_for
    from reaf.model.checkpoint import model_from_checkpoint

    model, _, _, split = setup
    ckpt = tmp_path / "resize.pt"
    torch.save({"state_dict": model.state_dict(), "config": {"model": model.cfg.to_dict(),
                "args": {"input_info": RESIZE[1:]}}}, ckpt)
    assert model_from_checkpoint(ckpt).recorded_input == InputSpec(model.cfg.vision.img_size, mode="resize")
    assert input_spec_for(["-1000", "200", "crop"], model_from_checkpoint(ckpt)).hu_max == 200.0
    assert input_spec_for(None, model) == InputSpec(model.cfg.vision.img_size)  # a bare model records nothing

    def probabilities(*flags):
        out = tmp_path / f"zs{len(list(tmp_path.iterdir()))}"
        assert zero_shot.main(["--resume", str(ckpt), "--zeroshot-ct-rate", str(split), "--input-data-type", "ori",
                               *flags, "--results-dir", str(out), "--batch-size", "2", "--workers", "0",
                               "--device", "cpu", "--bootstrap", "0", "--no-plots"]) == 0
        table = pd.read_csv(out / "probabilities.csv").set_index("VolumeName")
        return table[[f"volume:{c}" for c in CLASSES]].loc[NAMES].to_numpy()

    recorded, resize, crop = probabilities(), probabilities(*RESIZE), probabilities("--input-info", "-1150", "350",
                                                                                      "crop")
    assert np.array_equal(recorded, resize) and np.abs(recorded - crop).max() > 1e-5
    out = tmp_path / "predicted"
    assert predict_main([str(split / "volumes"), "--model", str(ckpt), "--out", str(out), "--batch-size", "2",
                         "--device", "cpu"]) == 0
    assert np.abs(pd.read_csv(out / "predictions.csv")[CLASSES].to_numpy() - resize).max() <= 1e-9


def test_a_dicom_exports_root_is_searched_through_its_dicomdir(tmp_path, caplog):
    """A DICOM export (a DICOMDIR at its root over patient/study/series folders) gives one scan per image series
    folder; the root and a folder of reports are no scans (logged), and a folder the user names keeps its error."""
    pydicom = pytest.importorskip("pydicom")
    from tests.support.dicom import write_series

    real = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
    found = find_scans([real])
    assert [s.path.relative_to(real).as_posix() for s in found] == [
        "77654033/CR1", "77654033/CR2", "77654033/CR3", "77654033/CT2", "98892001/CT2N", "98892001/CT5N",
        "98892003/MR1", "98892003/MR2", "98892003/MR700"]  # fmt: skip
    root = tmp_path / "export"
    image = nib.load(write_scan(tmp_path / "scan.nii.gz", seed=0))
    study = root / "PAT1" / "STUDY1"
    for name in ("SER1", "SER2"):
        write_series(study / name, np.asarray(image.dataobj).astype(np.int16), image.affine)
    shutil.copy(real / "DICOMDIR", root / "DICOMDIR")
    (study / "SR").mkdir()
    shutil.copy(real / "DICOMDIR", study / "SR" / "REPORT")  # a DICOM file that is no image
    with caplog.at_level("INFO", logger="reaf.evaluation.scans"):
        found = find_scans([root])
    assert [(s.path, s.kind) for s in found] == [(study / "SER1", "dicom"), (study / "SER2", "dicom")]
    assert f"{root}: its DICOM files hold no image" in caplog.text and f"{study / 'SR'}: its DICOM" in caplog.text
    assert [s.path for s in find_scans([study / "SR"])] == [study / "SR"]
    with pytest.raises(ScanError, match=r"SR: no DICOM image files \(1 non-image DICOM files\)$"):
        read_hu(find_scans([study / "SR"])[0])


def test_a_nifti_without_orientation_is_read_with_a_warning(tmp_path, caplog):
    """No sform/qform or an identity affine: read in CT-RATE's voxel order, said in a warning that names the file,
    and louder when its shape says the array was saved slices-first; a stated affine, or a metadata row (CT-RATE
    v1), reads silently."""
    from tests.support.volumes import chest_like, metadata_row

    stated = write_scan(tmp_path / "stated.nii.gz", seed=0)
    hu = chest_like((20, 64, 64), seed=1).astype(np.int16)  # (z, y, x)
    xyz, zyx = tmp_path / "xyz.nii.gz", tmp_path / "zyx.nii.gz"
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0), np.eye(4)), xyz)
    nib.save(nib.Nifti1Image(hu, np.eye(4)), zyx)  # slices first, as numpy holds them
    table = tmp_path / "meta.csv"
    pd.DataFrame([metadata_row("xyz", spacing=(1.0, 1.0, 1.0), intercept=0.0)]).to_csv(table, index=False)
    with caplog.at_level("WARNING", logger="reaf.evaluation.scans"):
        for source in find_scans([stated, xyz, zyx]):
            read_hu(source)
        read_hu(find_scans([xyz], metadata=[table])[0])
    warned = [r.getMessage() for r in caplog.records if "states no orientation" in r.getMessage()]
    assert len(warned) == 2 and warned[0].startswith(f"{xyz}: the header states no orientation (identity affine)")
    assert "likely wrong" not in warned[0] and "shape (64, 64, 20)" in warned[0]
    assert warned[1].startswith(f"{zyx}: ") and "shape (20, 64, 64): axes 1-2 look like the slices" in warned[1]


def test_thresholds_from_a_results_json_of_the_same_model_make_findings(setup, tmp_path, capsys):
    """--thresholds: each class's ROC-corner threshold from zero_shot.py's results.json on a labelled split; a
    finding is p > its threshold (as the ctclip metrics count). A results.json of other weights, another template or
    another input is refused. reaf.export --results records them in the weights folder, which then gives findings
    by itself (for the template and input they were chosen with)."""
    import json

    import zero_shot

    model, _, _, split = setup
    ckpt = tmp_path / "resize.pt"  # trained, it says, on the resize input: what every tool below then uses
    torch.save({"state_dict": model.state_dict(), "config": {"model": model.cfg.to_dict(),
                "args": {"input_info": RESIZE[1:]}}}, ckpt)
    weights = tmp_path / "weights"
    export_main([str(ckpt), "--out", str(weights)])
    assert zero_shot.main(["--resume", str(ckpt), "--zeroshot-ct-rate", str(split), "--input-data-type", "ori",
                           "--results-dir", str(tmp_path / "zs"), "--batch-size", "2", "--workers", "0",
                           "--device", "cpu", "--bootstrap", "0", "--no-plots"]) == 0
    evaluated = json.loads((tmp_path / "zs" / "results.json").read_text())
    per_class = evaluated["classification"]["18"]["per_class"]
    assert 10 <= sum(bool(per_class[c]["ctclip"]) for c in CLASSES) < len(CLASSES)  # classes with both labels
    # a random tiny model's p sit within 1e-3 of 0.5, between two cut points of the 0.01 grid: cut at each class's
    # median instead, so that findings differ between scans (the rule, not the grid, is under test)
    probs = pd.read_csv(tmp_path / "zs" / "probabilities.csv").set_index("VolumeName")
    cut = {c: float(probs[f"volume:{c}"].median()) for c in CLASSES if per_class[c]["ctclip"]}
    for c, t in cut.items():
        per_class[c]["ctclip"]["threshold"] = t
    results = tmp_path / "results.json"
    results.write_text(json.dumps(evaluated))
    for source in (ckpt, weights):  # a weights folder exported from the evaluated checkpoint is the same weights
        out = tmp_path / f"out_{source.name}"
        assert predict_main([str(split / "volumes"), "--model", str(source), "--out", str(out), "--batch-size", "2",
                             "--device", "cpu", "--thresholds", str(results)]) == 0
        table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
        assert list(table.columns) == ["source", *CLASSES, "findings", "error"]
        for _, row in table.iterrows():
            assert row["findings"] == "; ".join(c for c in CLASSES if c in cut and float(row[c]) > cut[c])
        assert any(table["findings"]) and not all(len(f.split("; ")) == len(cut) for f in table["findings"])
    printed = capsys.readouterr().out
    assert "findings over their thresholds" in printed and f"from {results}" in printed

    other = tmp_path / "other.pt"
    torch.manual_seed(5)
    torch.save({"state_dict": create_model("tiny").state_dict(), "config": {"model": model.cfg.to_dict(),
                "args": {"input_info": RESIZE[1:]}}}, other)
    for argv, cause in ((["--model", str(other)], "computed for checkpoint sha256"),
                        (["--model", str(ckpt), "--template", "organ"], "template 'volume' (the predictor's: 'organ')"),
                        (["--model", str(ckpt), "--input-info", "-1150", "350", "crop"],
                         "input {'size': [32, 96, 96], 'hu_min': -1150.0, 'hu_max': 350.0, 'mode': 'resize'} (the "
                         "predictor's:")):
        with pytest.raises(ValueError, match=re.escape(cause)):
            predict_main([str(split / "volumes"), "--out", str(tmp_path / "refused"), "--device", "cpu",
                          "--thresholds", str(results), *argv])
    assert not (tmp_path / "refused").exists()

    folder = tmp_path / "with_thresholds"
    export_main([str(ckpt), "--out", str(folder), "--results", str(results)])
    recorded = json.loads((folder / "config.json").read_text())["thresholds"]
    assert recorded["values"] == cut and recorded["results"] == str(results) and recorded["template"] == "volume"
    assert "Decision thresholds, each class's ROC corner" in (folder / "README.md").read_text()
    out = tmp_path / "out_folder"
    assert predict_main([str(split / "volumes"), "--model", str(folder), "--out", str(out), "--batch-size", "2",
                         "--device", "cpu"]) == 0
    assert pd.read_csv(out / "predictions.csv", keep_default_na=False)["findings"].tolist() == table["findings"].tolist()
    assert predict_main([str(split / "volumes"), "--model", str(folder), "--out", str(out), "--device", "cpu",
                         "--input-info", "-1150", "350", "crop"]) == 0
    assert "findings" not in pd.read_csv(out / "predictions.csv").columns  # chosen on resize, asked for crop
    bare = tmp_path / "without_thresholds"  # results of other weights: the card notes it, no thresholds recorded
    export_main([str(other), "--out", str(bare), "--results", str(results)])
    assert "thresholds" not in json.loads((bare / "config.json").read_text())
