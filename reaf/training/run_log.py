"""Run logging: one `log(metrics, step)` feeding the log file, the tqdm bar, wandb and tensorboard (rank 0 only)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

LOG_FILE = "train.log"
METRICS_FILE = "metrics.jsonl"  # one JSON object per log call, full float precision
_FORMAT = "%(asctime)s | %(levelname)s | %(message)s"


class _TqdmHandler(logging.StreamHandler):
    """Console handler that prints above an active tqdm bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


class _BriefFormatter(logging.Formatter):
    """The console's formatter: tracebacks stay in the log file (REAF_DEBUG=1 shows them here too)."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text = saved


def setup_logging(log_file: Path | None, is_main: bool) -> None:
    """Root logging: INFO to the console and `log_file` on rank 0, warnings only on other ranks. Replaces the
    handlers of an earlier call only (an in-process caller keeps its own)."""
    teardown_logging()
    root = logging.getLogger()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    handlers: list[logging.Handler] = [_TqdmHandler()]
    if log_file is not None and is_main:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a"))
    from reaf.exit_status import debug_enabled

    for handler in handlers:
        brief = isinstance(handler, _TqdmHandler) and not debug_enabled()
        handler.setFormatter((_BriefFormatter if brief else logging.Formatter)(_FORMAT))
        handler.reaf_run = True  # type: ignore[attr-defined]
        root.addHandler(handler)


def teardown_logging() -> None:
    """Remove and close the handlers `setup_logging` added."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "reaf_run", False)]:
        root.removeHandler(handler)
        handler.close()


def format_metrics(metrics: dict[str, float], step: int) -> str:
    """'step=12 train/loss=2.302585 ...': one parseable line (floats with 7 significant digits)."""
    parts = [f"step={step}"] + [f"{k}={v:.7g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()]
    return " ".join(parts)


class RunLogger:
    """Sends metrics to the logging file/console, the progress bar and the --report-to targets; a no-op off rank 0."""

    def __init__(self, run_dir: Path, targets: tuple[str, ...], *, project: str, name: str,
                 config: dict[str, Any], enabled: bool) -> None:
        self.enabled = enabled
        self.logger = logging.getLogger("reaf.training.step")
        self.bar: tqdm | None = None
        self.metrics_file = run_dir / METRICS_FILE
        self.wandb = self.tensorboard = None
        if not enabled:
            return
        if "tensorboard" in targets:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if "wandb" in targets:
            import wandb

            self.wandb = wandb.init(project=project, name=name, id=name, resume="allow", dir=str(run_dir),
                                    config=config, settings=wandb.Settings(console="off"))

    def progress(self, total: int, initial: int, desc: str) -> None:
        """Start a tqdm bar (steps of one epoch; ETA and rate from tqdm)."""
        self.close_bar()
        if self.enabled:
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                            file=sys.stderr, mininterval=1.0)

    def advance(self, postfix: dict[str, float] | None = None) -> None:
        """One optimiser step done: move the bar, and show `postfix` (loss, lr, samples/s) when given (at the
        logging interval: reading the loss every step would make each step wait for the GPU)."""
        if self.bar is not None:
            if postfix is not None:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(1)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record scalar `metrics` at optimiser step `step` everywhere this run reports to."""
        if not self.enabled:
            return
        self.logger.info(format_metrics(metrics, step))
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tensorboard is not None:
            for key, value in metrics.items():
                self.tensorboard.add_scalar(key, value, step)
            self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log(dict(metrics), step=step)

    def close(self) -> None:
        self.close_bar()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
