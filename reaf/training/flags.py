"""The training run's settings as one typed, frozen dataclass: what main.py's flags parse to, or what a library
caller (the demo) builds directly with `TrainFlags.with_defaults(...)`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


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
        from reaf.training.settings import build_parser, check_flags

        parser = build_parser()
        flags = cls.from_mapping({**{f.name: parser.get_default(f.name) for f in fields(cls)}, **values})
        check_flags(flags)
        return flags

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
