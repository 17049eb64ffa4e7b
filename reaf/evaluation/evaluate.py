"""Evaluate a checkpoint file on a labelled split: the one path zero_shot.py, the demo and bench/ go through."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reaf.evaluation.metrics import DEFAULT_BOOTSTRAP

log = logging.getLogger(__name__)

MOST_FINDINGS = ":most-findings"  # an `explain` entry naming the labelled volume with the most positive findings


@dataclass(frozen=True)
class EvalSettings:
    """What zero_shot.py's flags parse to (`--resume` -> checkpoint, `--zeroshot-ct-rate` -> split, ...)."""

    checkpoint: str
    split: str | None = None  # a labels CSV, a CT-RATE valid folder or a layout-B split; None: found under data_root
    data_root: str | None = None
    input_data_type: str = "stage2"
    input_info: list[str] | None = None  # --input-info MIN MAX crop|resize (None: the checkpoint's, else defaults)
    report_root: str | None = None
    model: str | None = None  # a configs/ name or JSON; None: the checkpoint's own config
    cxr_bert_path: str | None = None
    template: str = "volume"
    prompts: str = "v1"  # the prompt set: v1, ensemble or a JSON file (reaf.evaluation.prompt_sets)
    results_dir: str = "results/zero_shot"
    batch_size: int = 4
    workers: int = 2
    device: str = "cpu"
    seed: int = 0
    n_boot: int = DEFAULT_BOOTSTRAP
    plots: bool = True
    skip_bad: bool = False
    explain: list[str] = field(default_factory=list)  # volume names (or MOST_FINDINGS) to draw saliency pictures of

    def __post_init__(self) -> None:
        problem = settings_problem(self)
        if problem:
            raise ValueError(problem)


def settings_problem(s: EvalSettings) -> str | None:
    """What is wrong with the settings (named by zero_shot.py's flags), found before anything is loaded, or None."""
    from reaf.data.formats import FORMATS
    from reaf.evaluation.prompts import TEMPLATE_MODES

    for flag, value, low in (("--batch-size", s.batch_size, 1), ("--workers", s.workers, 0),
                             ("--bootstrap", s.n_boot, 0)):
        if not isinstance(value, int) or value < low:
            return f"{flag} must be an integer >= {low}, got {value!r}"
    if s.input_data_type not in FORMATS:
        return f"--input-data-type {s.input_data_type!r} is not one of {sorted(FORMATS)}"
    if s.template not in TEMPLATE_MODES:
        return f"--zeroshot-template {s.template!r} is not one of {TEMPLATE_MODES}"
    return None


PREVIOUS_OUTPUTS = ("results.json", "probabilities.csv", "plots/*.png")  # what one evaluation writes beside embeddings


def check_results_dir(results_dir: Path) -> None:
    """Create `results_dir` and write and remove a file in it, so that a read-only or unwritable folder stops the
    evaluation before the split is encoded (OutputError naming the folder)."""
    import tempfile

    from reaf.atomic import OutputError

    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=results_dir, prefix=".reaf-write-check-"):
            pass
    except OSError as err:
        raise OutputError(err.errno, err.strerror or str(err), str(results_dir)) from err


def clear_previous_outputs(results_dir: Path) -> list[Path]:
    """Remove the previous evaluation's results.json, probabilities.csv and plots from `results_dir` (logged), so
    that the folder never holds files of two runs; embeddings.pt stays (it is keyed, reused or replaced)."""
    old = [path for pattern in PREVIOUS_OUTPUTS for path in sorted(results_dir.glob(pattern))]
    for path in old:
        path.unlink()
    if old:
        log.info("%s: removed the previous evaluation's %s", results_dir, ", ".join(p.name for p in old))
    return old


def read_labelled_split(settings: EvalSettings) -> Any:
    """The split to evaluate: `settings.split`, else the test split found under `settings.data_root`."""
    from reaf.data.readers import find_splits, read_split

    source = settings.split
    if source is None:
        if settings.data_root is None:
            raise ValueError("give --zeroshot-ct-rate (a labelled split) or --data-root to find one under")
        source = find_splits(settings.data_root)["test"]
        if source is None:
            raise ValueError(f"no test/valid split found under --data-root {settings.data_root}")
    return read_split(source, data_root=settings.data_root, fmt=settings.input_data_type,
                      report_root=settings.report_root, require_labels=True, skip_bad=settings.skip_bad)


def explain(model: torch.nn.Module, split: Any, spec: Any, names: list[str], results_dir: Path,
            device: str | torch.device) -> list[Path]:
    """Saliency PNGs results_dir/plots/saliency_<NAME>.png for the named volumes; returns their paths."""
    from reaf.data.loader import VolumeDataset
    from reaf.evaluation.plots import explain_volume

    index = {s.name: i for i, s in enumerate(split.samples)}
    dataset, paths = VolumeDataset(split, spec), []
    for name in names:
        if name == MOST_FINDINGS:
            name = max(split.samples, key=lambda s: float(s.labels.sum())).name
        if name not in index:
            raise ValueError(f"--explain {name}: no such volume in {split.source}")
        path = results_dir / "plots" / f"saliency_{name}.png"
        explain_volume(model, dataset[index[name]]["image"], path, title=f"{name}: regions kept by the saliency "
                       "enhancer", device=device)
        paths.append(path)
    return paths


def evaluate_checkpoint(settings: EvalSettings) -> dict[str, Any] | None:
    """Zero-shot classification and retrieval of `settings.checkpoint` on its split (protocol v1), every output
    written to settings.results_dir. The checkpoint is read once. Under torch.distributed every rank calls this and
    encodes its share; rank 0 returns the results.json dict (with results["explained"]: the saliency PNGs), the
    other ranks None. The settings are checked when made (EvalSettings), the results folder before anything is
    loaded (check_results_dir); the previous evaluation's outputs there are removed before this one writes."""
    from reaf import dist
    from reaf.data.input_spec import input_spec_for
    from reaf.evaluation.protocol import run_evaluation
    from reaf.model.checkpoint import model_from_checkpoint

    results_dir = Path(settings.results_dir)
    check_results_dir(results_dir)  # every rank: before the model is built and the split encoded
    torch.manual_seed(settings.seed)
    model = model_from_checkpoint(settings.checkpoint, model=settings.model, cxr_bert_path=settings.cxr_bert_path)
    model = model.to(settings.device)
    spec = input_spec_for(settings.input_info, model)
    log.info("input: %s%s", spec.describe(), "" if settings.input_info is not None else " (the checkpoint's record)")
    split = read_labelled_split(settings)
    if dist.is_main():
        clear_previous_outputs(results_dir)
    with torch.no_grad():
        results = run_evaluation(model, split, spec, results_dir=settings.results_dir, batch_size=settings.batch_size,
                                 workers=settings.workers, device=settings.device, template=settings.template,
                                 checkpoint=settings.checkpoint, seed=settings.seed, n_boot=settings.n_boot,
                                 plots=settings.plots, skip_bad=settings.skip_bad, prompts=settings.prompts)
    if dist.is_main() and results is not None:
        paths = explain(model, split, spec, settings.explain, Path(settings.results_dir), settings.device)
        results = {**results, "explained": [str(p) for p in paths]}
    return results
