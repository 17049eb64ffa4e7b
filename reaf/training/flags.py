"""main.py's flags: the one training argparse parser (`build_parser`, `parse_args`) and the typed, frozen
dataclass it parses to (`TrainFlags`), which a library caller (the demo) builds with `TrainFlags.with_defaults`.
The parsed flags are read, never mutated."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from reaf.arg_types import non_negative_int, positive_int
from reaf.data.formats import FORMATS
from reaf.data.input_spec import add_input_info_argument
from reaf.data.loader import SAMPLE_UNITS
from reaf.data.text_sampling import TEXT_SAMPLINGS
from reaf.evaluation.prompts import TEMPLATE_MODES as ZEROSHOT_TEMPLATES
from reaf.model.config import FUSION_METHODS
from reaf.model.loss import POSITIVES

PRECISIONS = ("amp", "amp_bf16", "fp32")
REPORT_TARGETS = ("none", "wandb", "tensorboard")


@dataclass(frozen=True)
class TrainFlags:
    """One field per training flag (`--batch-size` -> batch_size); the defaults live in the parser
    (training.settings.build_parser), so they are declared once."""

    # data
    data_root: str | None
    train_data: str | None
    val_data: str | None
    zeroshot_ct_rate: str | None
    input_data_type: str
    input_info: list[str]  # HU MIN, MAX and crop|resize, as given
    report_root: str | None
    sample_unit: str
    text_sampling: str
    report_epochs: int
    sentence_share: float
    positives: str
    skip_bad: bool
    workers: int
    keep_in_memory: bool
    # model
    model: str
    fusion_method: str | None
    use_cxr_bert: bool | None
    cxr_bert_path: str | None
    lock_text: bool | None
    grad_checkpointing: bool
    vision_init: str | None
    load_checkpoint: str | None
    resume: str | None
    # optimisation
    batch_size: int
    epochs: int
    lr: float
    warmup: int
    warmup_epochs: float | None
    wd: float
    beta1: float
    beta2: float
    eps: float
    accum_freq: int
    grad_clip_norm: float | None
    precision: str
    seed: int
    # run
    name: str | None
    logs: str
    device: str | None
    report_to: str
    wandb_project_name: str
    log_every_n_steps: int
    save_frequency: int
    save_every_n_steps: int
    val_frequency: int
    zeroshot_frequency: int
    zeroshot_template: str

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> TrainFlags:
        """From a {field: value} mapping (a parsed namespace's vars); a missing or unknown field is an error."""
        names = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(values) - names), sorted(names - set(values))
        if unknown or missing:
            raise TypeError(f"training flags: unknown {unknown}, missing {missing}")
        return cls(**values)

    @classmethod
    def with_defaults(cls, **values: Any) -> TrainFlags:
        """The parser's defaults with `values` in their place, checked as the parser checks flags."""
        parser = build_parser()
        flags = cls.from_mapping({**{f.name: parser.get_default(f.name) for f in fields(cls)}, **values})
        check_flags(flags)
        return flags

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def add_text_flags(g: Any, **defaults: object) -> None:
    """main.py's training-text flags on parser or group ``g``; reaf.demo adds the same flags with its own defaults."""
    d = {"text_sampling": "report", "report_epochs": 0, "sentence_share": 0.5, "positives": "own", **defaults}
    g.add_argument("--text-sampling", default=d["text_sampling"], choices=TEXT_SAMPLINGS,
                   help="training text per sample (HLIP): the whole report, one of its sentences, or either (a "
                   "sentence with probability --sentence-share); validation and zero-shot always encode the whole "
                   "report (default: %(default)s)")
    g.add_argument("--report-epochs", type=non_negative_int, default=d["report_epochs"],
                   help="train on whole reports for the first N epochs, then as --text-sampling says (a first epoch "
                   "of whole reports leaves the ln(B) plateau sooner: one sentence fits many volumes of a batch; "
                   "default: %(default)s)")
    g.add_argument("--sentence-share", type=float, default=d["sentence_share"],
                   help="with --text-sampling both: the probability that a sample's text is one sentence rather than "
                   "the whole report (default: %(default)s)")
    g.add_argument("--positives", default=d["positives"], choices=POSITIVES,
                   help="own: each text's positive is its own volume (CLIP); shared: also every volume of the global "
                   "batch whose report holds all of the text's sentences (a repeated negation, the report of another "
                   "reconstruction), the target spread equally over them (default: %(default)s)")


def _data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-root", help="data root; with no --train-data the splits are found under it")
    g.add_argument("--train-data", help="training split: a layout-B split folder or a CT-RATE labels CSV")
    g.add_argument("--val-data", help="validation split: contrastive loss + retrieval every --val-frequency epochs")
    g.add_argument("--zeroshot-ct-rate", help="labelled split for zero-shot classification every "
                   "--zeroshot-frequency epochs")
    g.add_argument("--input-data-type", default="stage2", choices=sorted(FORMATS), help="volume file format")
    add_input_info_argument(g)
    g.add_argument("--report-root", help="the reference's report JSON (or folder of them) to take report text from")
    g.add_argument("--sample-unit", default="volume", choices=SAMPLE_UNITS,
                   help="volume: every reconstruction each epoch; scan: one random reconstruction per scan")
    add_text_flags(g)
    g.add_argument("--skip-bad", action="store_true", help="skip (count and log) unreadable samples instead of failing")
    g.add_argument("--workers", type=non_negative_int, default=4, help="data loader workers per process")
    g.add_argument("--keep-in-memory", action="store_true",
                   help="keep each decoded training volume in memory after its first epoch (needs --workers 0)")


def _model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="vit_base_singlescan_h2_token2744", help="configs/ name or a JSON path")
    g.add_argument("--fusion-method", choices=FUSION_METHODS, help="override the config's layer-fusion method")
    g.add_argument("--use-cxr-bert", action=argparse.BooleanOptionalAction, default=None,
                   help="use the CXR-BERT text tower from --cxr-bert-path (default: when the config asks for it)")
    g.add_argument("--cxr-bert-path", help="local CXR-BERT folder (transformers format)")
    g.add_argument("--lock-text", action=argparse.BooleanOptionalAction, default=None,
                   help="freeze BERT except its LayerNorms (default: the model config's text.lock)")
    g.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=False,
                   help="activation checkpointing of every ViT block (and of BERT when trainable)")
    g.add_argument("--vision-init", help="local timm MAE ViT-B/16 checkpoint to inflate into the volume encoder")
    g.add_argument("--load-checkpoint", help="load weights only (ours or the reference format) before training")
    g.add_argument("--resume", help="checkpoint path or 'latest' (newest latest.pt of the run folder)")


def _optim(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=positive_int, default=16, help="volumes per process per micro-batch")
    g.add_argument("--epochs", type=positive_int, default=50)
    g.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    warmup = g.add_mutually_exclusive_group()
    warmup.add_argument("--warmup", type=non_negative_int, default=2, help="linear warm-up length in optimiser steps")
    warmup.add_argument("--warmup-epochs", type=float,
                        help="warm-up length in epochs (the reference's unit: its --warmup 2 meant two epochs); "
                             "replaces --warmup")
    g.add_argument("--wd", type=float, default=0.2, help="AdamW weight decay (decayed group only)")
    g.add_argument("--beta1", type=float, default=0.9)
    g.add_argument("--beta2", type=float, default=0.98)
    g.add_argument("--eps", type=float, default=1e-6)
    g.add_argument("--accum-freq", type=positive_int, default=1,
                   help="micro-batches per optimiser step; negatives span all of them (feature caching)")
    g.add_argument("--grad-clip-norm", type=float, help="clip the global gradient norm to this value")
    g.add_argument("--precision", default="amp", choices=PRECISIONS,
                   help="amp: fp16 autocast + GradScaler on GPU, fp32 on CPU; amp_bf16: bf16 autocast; fp32")
    g.add_argument("--seed", type=int, default=0, help="base seed (each rank adds its rank)")


def _run(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--name", help="run name (default: date, model, lr, global batch, workers, precision)")
    g.add_argument("--logs", default="./logs", help="runs are written to <logs>/<name>/")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda:<local rank> when available, else cpu)")
    g.add_argument("--report-to", default="none",
                   help="comma list of none, wandb, tensorboard (wandb honours WANDB_MODE=offline)")
    g.add_argument("--wandb-project-name", default="REAF")
    g.add_argument("--log-every-n-steps", type=positive_int, default=10,
                   help="log train metrics every N optimiser steps; only then (and before a checkpoint, and at an "
                   "epoch's end) is the loss read from the GPU and checked for NaN/inf")
    g.add_argument("--save-frequency", type=non_negative_int, default=1, help="write epoch_K.pt every N epochs (0: only the last)")
    g.add_argument("--save-every-n-steps", type=non_negative_int, default=200,
                   help="also write a mid-epoch latest.pt every N optimiser steps (0: off)")
    g.add_argument("--val-frequency", type=non_negative_int, default=1, help="evaluate --val-data every N epochs (0: off)")
    g.add_argument("--zeroshot-frequency", type=non_negative_int, default=1, help="zero-shot every N epochs (0: off)")
    g.add_argument("--zeroshot-template", default="volume", choices=ZEROSHOT_TEMPLATES,
                   help="zero-shot prompt template: 'The volume shows', per organ, or both")


def build_parser() -> argparse.ArgumentParser:
    """The training CLI; flag names follow the reference's README."""
    p = argparse.ArgumentParser(prog="main.py", description="Train REAF (CLIP-style chest CT model) on CT-RATE.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for add in (_data, _model, _optim, _run):
        add(p)
    return p


def report_targets(value: str) -> tuple[str, ...]:
    """'wandb,tensorboard' -> ('wandb', 'tensorboard'); 'none' -> ()."""
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    bad = [n for n in names if n not in REPORT_TARGETS]
    if bad:
        raise ValueError(f"--report-to: unknown {bad}; choose from {REPORT_TARGETS}")
    if "none" in names and len(names) > 1:
        raise ValueError("--report-to: 'none' cannot be combined with other targets")
    return tuple(n for n in names if n != "none")


def flag_problem(args: TrainFlags) -> str | None:
    """What is wrong with a set of training flags (the first thing found), or None."""
    positive = ("batch_size", "epochs", "accum_freq")
    non_negative = ("warmup", "workers", "save_frequency", "save_every_n_steps", "val_frequency",
                    "zeroshot_frequency", "report_epochs")
    for key in positive:
        if getattr(args, key) < 1:
            return f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}"
    for key in non_negative:
        if getattr(args, key) < 0:
            return f"--{key.replace('_', '-')} must be >= 0, got {getattr(args, key)}"
    if args.log_every_n_steps < 1:
        return "--log-every-n-steps must be >= 1"
    if not args.lr > 0:  # caught here, before a run folder exists, not by the optimiser
        return f"--lr must be > 0, got {args.lr}"
    if not args.wd >= 0 or not args.eps > 0:
        return f"--wd must be >= 0 and --eps > 0, got {args.wd} and {args.eps}"
    for key in ("beta1", "beta2"):
        if not 0.0 <= getattr(args, key) < 1.0:
            return f"--{key} must be in [0, 1), got {getattr(args, key)}"
    if args.warmup_epochs is not None and args.warmup_epochs < 0:
        return f"--warmup-epochs must be >= 0, got {args.warmup_epochs}"
    if args.grad_clip_norm is not None and args.grad_clip_norm <= 0:
        return "--grad-clip-norm must be > 0"
    if not 0.0 < args.sentence_share < 1.0:
        return f"--sentence-share must be in (0, 1), got {args.sentence_share}"
    if args.sentence_share != 0.5 and args.text_sampling != "both":
        return (f"--sentence-share {args.sentence_share} applies to --text-sampling both only (got "
                f"{args.text_sampling!r}: it would do nothing)")
    if args.positives not in POSITIVES:  # argparse checks the CLI's; a library caller's TrainFlags are checked here
        return f"--positives {args.positives!r} is not one of {POSITIVES}"
    try:
        report_targets(args.report_to)
    except ValueError as err:
        return str(err)
    if args.use_cxr_bert and not args.cxr_bert_path:
        return "--use-cxr-bert needs --cxr-bert-path (a local CXR-BERT folder; nothing is downloaded)"
    if not (args.train_data or args.data_root):
        return "give --train-data or --data-root"
    return None


def check_flags(args: TrainFlags) -> None:
    """ValueError when `flag_problem` finds something (the library's check; the CLI reports it through argparse)."""
    problem = flag_problem(args)
    if problem:
        raise ValueError(problem)


def parse_args(argv: Sequence[str] | None = None) -> TrainFlags:
    """Parse and validate the training flags into TrainFlags; errors exit with argparse's message."""
    p = build_parser()
    args = TrainFlags.from_mapping(vars(p.parse_args(argv)))
    problem = flag_problem(args)
    if problem:
        p.error(problem)
    return args
