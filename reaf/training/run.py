"""A training run from its settings (TrainFlags): resolved settings, run folder, model, data, optimiser, the epoch loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from reaf import atomic, dist
from reaf.data.loader import build_dataloader
from reaf.model.checkpoint import is_training_checkpoint, read_checkpoint
from reaf.training import skips
from reaf.training import state as train_state
from reaf.training.epoch_eval import evaluate_epoch
from reaf.training.flags import TrainFlags
from reaf.training.optim import CosineSchedule, build_optimizer, warmup_steps
from reaf.training.run_log import LOG_FILE, RunLogger, setup_logging, teardown_logging
from reaf.training.settings import RunSettings, resolve
from reaf.training.state import Position
from reaf.training.step import StepContext, autocast_factory, train_one_epoch

log = logging.getLogger(__name__)
CONFIG_FILE = "config.json"


def model_overrides(args: TrainFlags, resumed: dict[str, Any] | None) -> dict[str, Any]:
    """Config fields the flags (or a resumed checkpoint's reference_compat switch) override."""
    overrides: dict[str, Any] = {"fusion_method": args.fusion_method, "lock": args.lock_text}
    if resumed is not None and resumed["config"]["model"]["vision"].get("reference_compat"):
        overrides["reference_compat"] = True
    return {k: v for k, v in overrides.items() if v is not None}


def config_differences(saved: dict[str, Any], now: dict[str, Any], where: str = "") -> list[str]:
    """'vision.depth: 3 -> 4' for each leaf of two nested config dicts that differs (at most 8, then a count)."""
    out = []
    for key in sorted(saved.keys() | now.keys()):
        a, b, name = saved.get(key), now.get(key), f"{where}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{name}.")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out if where or len(out) <= 8 else [*out[:8], f"and {len(out) - 8} more"]


def build_model(args: TrainFlags, resumed: dict[str, Any] | None, device: torch.device) -> torch.nn.Module:
    """create_model from --model and the overrides, then --vision-init, --load-checkpoint, grad checkpointing."""
    from reaf import create_model, load_checkpoint
    from reaf.model.config import config_from_dict

    bert = args.cxr_bert_path if args.use_cxr_bert is not False else None
    model = create_model(args.model, cxr_bert_path=bert, **model_overrides(args, resumed))
    if args.vision_init:
        from reaf.model.mae_inflation import load_mae_weights

        load_mae_weights(model, args.vision_init)
    if args.load_checkpoint:
        load_checkpoint(model, args.load_checkpoint)
        log.info("loaded weights from %s", args.load_checkpoint)
    # compared after loading, so that a checkpoint written before a config field existed gets its default
    if resumed is not None:
        differ = config_differences(config_from_dict(resumed["config"]["model"]).to_dict(), model.cfg.to_dict())
        if differ:
            raise ValueError(f"--resume: the checkpoint's model config differs from this run's: {'; '.join(differ)}; "
                             "use --load-checkpoint to start from its weights")
    model.set_grad_checkpointing(args.grad_checkpointing)
    return model.to(device)


@dataclass
class RunData:
    """The splits, the input spec and the loader settings; each loader is built once, so that its persistent
    workers live across epochs."""

    spec: Any
    tokenize: Callable
    train: Any
    val: Any
    zeroshot: Any
    batch_size: int
    workers: int
    seed: int
    sample_unit: str
    skip_bad: bool
    text_sampling: str
    keep_in_memory: bool
    report_epochs: int = 0
    sentence_share: float = 0.5
    _loaders: dict[str, Any] = field(default_factory=dict, repr=False)

    def loader(self, epoch: int) -> Any:
        """The training loader, sharded over the ranks, set to `epoch` (its sampler's set_epoch applied)."""
        if "train" not in self._loaders:
            self._loaders["train"] = build_dataloader(
                self.train, self.spec, self.tokenize, batch_size=self.batch_size, workers=self.workers,
                seed=self.seed, train=True, sample_unit=self.sample_unit, epoch=epoch, skip_bad=self.skip_bad,
                text_sampling=self.text_sampling, keep_in_memory=self.keep_in_memory,
                report_epochs=self.report_epochs, sentence_share=self.sentence_share)
        loader = self._loaders["train"]
        loader.sampler.set_epoch(epoch)
        return loader

    def eval_loader(self, split: Any) -> Any:
        """This rank's share of an evaluation split, in the split's order (built once per split, as above)."""
        key = f"eval:{id(split)}"
        if key not in self._loaders:
            self._loaders[key] = build_dataloader(
                split, self.spec, self.tokenize, batch_size=self.batch_size, workers=self.workers, seed=self.seed,
                train=False, skip_bad=self.skip_bad)
        return self._loaders[key]


def build_data(args: TrainFlags, settings: RunSettings, model: torch.nn.Module) -> RunData:
    """read_split for the train / val / zero-shot sources and the InputSpec for the model's input size."""
    from reaf.data.input_spec import InputSpec
    from reaf.data.readers import read_split

    def read(source: str | None, labels: bool = False) -> Any:
        if source is None:
            return None
        return read_split(source, data_root=args.data_root, fmt=args.input_data_type, report_root=args.report_root,
                          skip_bad=args.skip_bad, require_labels=labels)

    spec = InputSpec.from_args(args.input_info, model.cfg.vision.img_size)
    zeroshot = read(settings.zeroshot_data, labels=True) if args.zeroshot_frequency else None
    same = zeroshot is not None and settings.val_data == settings.zeroshot_data  # one split, encoded once per epoch
    val = (zeroshot if same else read(settings.val_data)) if args.val_frequency else None
    return RunData(spec, model.tokenize, read(settings.train_data), val, zeroshot, batch_size=args.batch_size,
                   workers=args.workers, seed=args.seed, sample_unit=args.sample_unit, skip_bad=args.skip_bad,
                   text_sampling=args.text_sampling, keep_in_memory=args.keep_in_memory,
                   report_epochs=args.report_epochs, sentence_share=args.sentence_share)


def run_config(args: TrainFlags, settings: RunSettings, model: torch.nn.Module) -> dict[str, Any]:
    """The resolved config stored in config.json and in every checkpoint."""
    return {"model": model.cfg.to_dict(), "args": args.to_dict(), "run": asdict(settings)}


def locate_resume(args: TrainFlags) -> Path | None:
    """The checkpoint --resume points at (rank 0 decides; every rank gets the same answer)."""
    if not args.resume:
        return None
    found = train_state.find_resume(args.resume, Path(args.logs), args.name) if dist.is_main() else None
    return dist.broadcast_object(found)  # None: 'latest' found nothing, a fresh run (logged in its train.log)


def prepare_run_dir(run_dir: Path, resuming: bool) -> None:
    """Create <logs>/<name>/checkpoints on rank 0; refuse (on every rank) to train over another run's checkpoints."""
    latest = run_dir / train_state.CHECKPOINT_DIR / train_state.LATEST
    clash = dist.broadcast_object(latest.exists() and not resuming if dist.is_main() else None)
    if clash:
        raise FileExistsError(f"{run_dir} already holds a run with checkpoints; pass --resume latest to continue it "
                              "or choose another --name")
    if dist.is_main():
        (run_dir / train_state.CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    dist.barrier()


@dataclass
class TrainingRun:
    """The objects of one training run and the epoch loop over them."""

    args: TrainFlags
    env: dist.DistEnv
    settings: RunSettings
    model: torch.nn.Module  # bare (no DDP)
    data: RunData
    ctx: StepContext
    logger: RunLogger
    config: dict[str, Any]
    skips: skips.SkipLog  # --skip-bad: volumes dropped from their batch, listed in <run>/skipped.jsonl

    def save(self, pos: Position, epoch_file: bool) -> None:
        """Every rank contributes its RNG state; rank 0 writes the checkpoint atomically."""
        rng = dist.all_gather_object(train_state.capture_rng(self.env.device))
        if not self.env.is_main:
            return
        sampler = {"batch_size": self.args.batch_size, "world_size": self.env.world_size,
                   "accum_freq": self.args.accum_freq}
        payload = train_state.checkpoint_payload(self.model, self.ctx.optimizer, self.ctx.scaler, pos,
                                                 name=self.settings.name, config=self.config, rng=rng,
                                                 sampler=sampler)
        path = train_state.write_checkpoint(payload, Path(self.settings.run_dir), epoch_file=epoch_file)
        log.info("checkpoint: %s (epoch %d, step %d)", path, pos.epoch, pos.step)

    def evaluate(self, epoch: int, step: int) -> None:
        """Validation every --val-frequency and zero-shot every --zeroshot-frequency epochs (epoch_eval: each due
        split encoded once, sharded over the ranks), logged by rank 0; the training RNG streams are left as they
        were."""
        metrics = evaluate_epoch(self, epoch)
        if metrics:
            self.logger.log({**metrics, "epoch": epoch}, step)
        dist.barrier()

    def cache_report_features(self, first_epoch: int) -> None:
        """A wholly frozen text tower (lock all): the features of every distinct training report, computed once
        before the first step, shortest first (TextTower.fill_feature_cache), instead of step by step in mixed
        lengths; only when epochs first_epoch.. train on whole reports. Draws no random numbers, so a resumed run
        trains exactly as the uninterrupted one."""
        text, data = self.model.text, self.data
        whole = data.text_sampling in ("report", "both") or first_epoch < data.report_epochs
        if not text.frozen or not whole:
            return
        reports = list(dict.fromkeys(sample.report for sample in data.train.samples))
        tic = time.perf_counter()
        new = 0
        for start in range(0, len(reports), 4096):  # tokenised in chunks: CT-RATE holds ~47k reports
            ids, mask = self.model.tokenize(reports[start : start + 4096])
            new += text.fill_feature_cache(ids.to(self.env.device), mask.to(self.env.device),
                                           progress=self.env.is_main)
        log.info("text features of %d distinct training report(s) from the frozen text tower: %d new, %.1f s",
                 len(reports), new, time.perf_counter() - tic)

    def train_epochs(self, pos: Position, rng: dict[str, Any] | None, steps_per_epoch: int) -> Position:
        """Epochs pos.epoch..epochs-1, resuming mid-epoch at pos.batches_done with this rank's saved RNG."""
        args = self.args
        for epoch in range(pos.epoch, args.epochs):
            loader = train_state.skip_batches(self.data.loader(epoch), pos.batches_done)
            if rng is not None and pos.batches_done == 0:
                train_state.restore_rng(rng, self.env.device)  # before the epoch's iterator, as when saved
                rng = None
            batches = iter(loader)
            if rng is not None:
                train_state.restore_rng(rng, self.env.device)  # mid-epoch: the iterator existed when saved
                rng = None
            if args.skip_bad:
                batches = skips.equalize(batches, self.skips, epoch=epoch, device=self.env.device)
            pos = train_one_epoch(self.ctx, batches, pos, steps_per_epoch=steps_per_epoch, logger=self.logger,
                                  log_every=args.log_every_n_steps, save_every=args.save_every_n_steps,
                                  on_save=lambda p: self.save(p, epoch_file=False))
            pos = Position(epoch + 1, 0, pos.step)
            last = epoch + 1 == args.epochs
            # evaluate first: a run killed during evaluation resumes before this epoch's end and evaluates again,
            # instead of resuming past an evaluation that never finished (evaluation leaves the RNG as it was)
            self.evaluate(epoch + 1, pos.step)
            self.save(pos, epoch_file=last or bool(args.save_frequency and (epoch + 1) % args.save_frequency == 0))
        return pos


def _build(args: TrainFlags, env: dist.DistEnv) -> tuple[TrainingRun, Position, dict | None, int]:
    train_state.seed_everything(args.seed + env.rank)
    resume = locate_resume(args)
    resumed = read_checkpoint(resume, mmap=False) if resume else None
    ours = resumed is not None and is_training_checkpoint(resumed)
    settings = resolve(args, env, resume, resumed["name"] if ours else None)
    run_dir = Path(settings.run_dir)
    prepare_run_dir(run_dir, resuming=resume is not None)
    setup_logging(run_dir / LOG_FILE, env.is_main)
    if args.resume and resume is None:
        log.warning("--resume latest: no latest.pt under %s yet; starting a fresh run", args.logs)
    if ours:
        train_state.check_resume_flags(resume, resumed, args.to_dict())
    log.info("run %s on %d process(es), device %s, precision %s", settings.name, env.world_size, env.device,
             settings.precision)
    if env.device.type == "cpu" and args.precision != "fp32":
        log.info("--precision %s on a CPU: %s", args.precision, "fp32, as these CPUs have no fast fp16/bf16 matmul"
                 if settings.precision == "fp32" else "bf16 autocast as asked by name (slower than fp32 here)")
    model = build_model(args, resumed if ours else None, env.device)
    data = build_data(args, settings, model)
    optimizer = build_optimizer(model, lr=args.lr, weight_decay=args.wd, betas=(args.beta1, args.beta2),
                                eps=args.eps)
    scaler = torch.amp.GradScaler(env.device.type, enabled=settings.precision == "fp16")
    pos, rng = Position(), None
    if resumed is not None:
        pos, rng = train_state.restore_run(resume, resumed, model, optimizer, scaler, batch_size=args.batch_size,
                                           world_size=env.world_size, rank=env.rank)
    steps_per_epoch = len(data.loader(0)) // args.accum_freq
    if steps_per_epoch == 0:
        raise ValueError(f"the training split gives fewer than {args.accum_freq} batch(es) of "
                         f"{args.batch_size} x {env.world_size} rank(s): no optimiser step per epoch")
    warmup = warmup_steps(args.warmup, args.warmup_epochs, steps_per_epoch)
    log.info("warm-up: %d optimiser step(s)%s", warmup,
             "" if args.warmup_epochs is None else f" ({args.warmup_epochs:g} epoch(s) of {steps_per_epoch})")
    schedule = CosineSchedule(optimizer, args.lr, warmup, steps_per_epoch * args.epochs)
    ctx = StepContext(dist.wrap_model(model, env), optimizer, scaler, schedule,
                      autocast_factory(settings.precision, env.device), env.device, args.accum_freq,
                      args.grad_clip_norm, args.positives)
    config = run_config(args, settings, model)
    if env.is_main:
        atomic.write_json(config, run_dir / CONFIG_FILE, indent=2, default=str)
    logger = RunLogger(run_dir, settings.report_to, project=args.wandb_project_name, name=settings.name,
                       config=config, enabled=env.is_main)
    skip_log = skips.SkipLog(run_dir / skips.SKIPPED_FILE)
    return TrainingRun(args, env, settings, model, data, ctx, logger, config, skip_log), pos, rng, steps_per_epoch


def train_main(args: TrainFlags) -> Path:
    """Train as the flags say (one process, or one of torchrun's); returns the run folder."""
    env = dist.init_distributed(args.device)
    fit = None
    try:
        fit, pos, rng, steps_per_epoch = _build(args, env)
        if pos.epoch >= args.epochs:
            log.info("nothing to do: the checkpoint already finished %d epoch(s)", pos.epoch)
        else:
            log.info("training from epoch %d, step %d (%d steps per epoch)", pos.epoch, pos.step, steps_per_epoch)
            fit.cache_report_features(pos.epoch)
            fit.train_epochs(pos, rng, steps_per_epoch)
        if fit.skips.count:
            log.warning("--skip-bad: %d volume(s) skipped, listed in %s", fit.skips.count, fit.skips.path)
        return Path(fit.settings.run_dir)
    except Exception as err:
        if logging.getLogger().hasHandlers():  # the run log (traceback in the file only); else main.py's one line
            log.error("training stopped: %s: %s", type(err).__name__, err, exc_info=True)
        raise
    finally:
        if fit is not None:
            fit.logger.close()
        teardown_logging()
        dist.shutdown()
