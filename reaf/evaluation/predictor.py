"""Predict on one's own scans: each scan read, preprocessed and encoded once; the 18 findings' zero-shot
probabilities exactly as zero_shot.py computes them (protocol v1), the embedding, and optionally the enhancer's kept
regions in the scan's own voxels and the final patch-token map."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch import nn

from reaf.data import transforms as T
from reaf.data.csv_tables import CLASSES
from reaf.data.input_spec import InputSpec, input_spec_for
from reaf.evaluation.prompts import templates_for
from reaf.evaluation.protocol import PROTOCOL_VERSION, prompt_embeddings, zero_shot_probabilities
from reaf.evaluation.saliency_map import grid_to_voxels, kept_label_map, saliency_image
from reaf.evaluation.scans import Geometry, ScanError, ScanSource, find_scans, read_geometry, read_hu
from reaf.finite import require_finite

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """One scan's result. `error` is set (and the rest empty) for a scan that could not be read under skip_bad."""

    source: str  # the scan's path (#series UID when one was asked for)
    name: str  # a file-safe name, unique within a run (saliency/ and tokens/ files)
    probabilities: dict[str, float] = field(default_factory=dict)  # class -> p, in CLASSES order
    embedding: np.ndarray | None = None  # (E,) float32, unit norm
    error: str | None = None
    saliency: nib.Nifti1Image | None = None  # kept regions (1 scan, 2 slice, 3 both) in the input's voxels + affine
    saliency_grid: dict[str, np.ndarray] | None = None  # {"scan", "slice"} -> (d, h, w) bool on the token grid
    model_input: np.ndarray | None = None  # (D, H, W) normalised model input (kept with saliency, for the picture)
    tokens: torch.Tensor | None = None  # (d, h, w, C) final normed patch tokens
    findings: list[str] | None = None  # classes over their threshold (only when the predictor has thresholds)
    timing: dict[str, float] = field(default_factory=dict)  # read_s, preprocess_s, encode_s (its share of a batch)

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The k most probable findings, best first."""
        return sorted(self.probabilities.items(), key=lambda item: -item[1])[:k]


@dataclass
class _Prepared:
    source: ScanSource
    name: str
    volume: torch.Tensor | None = None  # (1, D, H, W)
    resampled: tuple[int, int, int] | None = None
    geometry: Geometry | None = None
    error: str | None = None
    timing: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def capture(trunk: nn.Module, *, saliency: bool, tokens: bool) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks that record, during an encode_image call and without changing its output, each level's kept
    regions {"scan", "slice"} (B, d, h, w) bool (from the fused map the enhancer scores) and the final normed patch
    tokens "tokens" (B, N, C)."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    if saliency:
        if not trunk.cfg.fusion_saliency:
            raise ValueError("this model has no saliency enhancer (fusion_saliency is false): no --saliency")
        for level, module in trunk.fusion.items():
            def keep(_module, _inputs, fused, level=level):
                store[level] = trunk.saliency.token_weights(fused)[1]
            handles.append(module.register_forward_hook(keep))
    if tokens:
        handles.append(trunk.norm.register_forward_hook(lambda _m, _i, out: store.__setitem__("tokens", out[:, 1:])))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


class Predictor:
    """`Predictor(MODEL).predict(path)`: MODEL is a weights folder (reaf.export), our checkpoint, the reference's
    reaf.pt (with `cxr_bert_path`) or a model object. The input is `input_spec`, else `input_info` (--input-info MIN
    MAX crop|resize) at the model's size, else the one the model records (-1150 350 crop when it records none).
    `thresholds`: a zero_shot.py results.json of the same weights, prompts and input, whose per-class ROC-corner
    thresholds turn each scan's probabilities into `findings` (reaf.evaluation.thresholds); a weights folder's own
    (reaf.export --results) are used without one."""

    def __init__(self, model: str | Path | nn.Module, *, cxr_bert_path: str | None = None,
                 device: str | torch.device | None = None, input_spec: InputSpec | None = None,
                 input_info: list[str] | None = None, template: str = "volume", batch_size: int = 1,
                 model_config: str | None = None, thresholds: str | Path | None = None) -> None:
        from reaf.model.checkpoint import model_from_checkpoint

        if template not in ("volume", "organ"):
            raise ValueError(f"template {template!r} must be 'volume' or 'organ'")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.checkpoint = None if isinstance(model, nn.Module) else Path(model)
        if isinstance(model, nn.Module):
            self.model = model
        else:
            self.model = model_from_checkpoint(model, model=model_config, cxr_bert_path=cxr_bert_path)
        self.model = self.model.to(self.device).eval()  # fp32: no autocast (slow on CPUs, and zero_shot.py's math)
        size = self.model.cfg.vision.img_size
        self.spec = input_spec or input_spec_for(input_info, self.model)
        if tuple(self.spec.size) != tuple(size):
            raise ValueError(f"input size {self.spec.size} differs from the model's img_size {size}")
        self.template, self.batch_size = template, batch_size
        self.thresholds = self._thresholds(thresholds)
        self.prompts = prompt_embeddings(self.model, templates_for(template), batch_size=batch_size,
                                         device=self.device)[template]  # (18, 2, E), as zero_shot.py
        self.logit_scale = float(self.model.logit_scale.detach().float().exp().cpu())

    def _thresholds(self, results: str | Path | None):
        """A results.json's thresholds, checked against these weights, prompts and input before anything is encoded;
        without one, those a weights folder records (reaf.export --results) when they fit the template and input."""
        from reaf.evaluation.thresholds import read_thresholds, recorded_thresholds

        if results is not None:
            return read_thresholds(results, checkpoint=self.checkpoint, template=self.template,
                                   input_spec=self.spec.describe())
        if self.checkpoint is None or not self.checkpoint.is_dir():
            return None
        recorded = recorded_thresholds(self.checkpoint)
        if recorded is None:
            return None
        wanted = {"template": self.template, "input": self.spec.describe()}
        if any(recorded.source.get(key) != value for key, value in wanted.items()):
            log.warning("%s: its recorded thresholds are for template %r and input %s, not %r and %s: no findings, "
                        "probabilities only", self.checkpoint, recorded.source.get("template"),
                        recorded.source.get("input"), self.template, wanted["input"])
            return None
        return recorded

    def describe(self) -> dict[str, Any]:
        """What the predictions depend on: protocol, template, input spec, logit scale."""
        described = {"protocol_version": PROTOCOL_VERSION, "template": self.template, "input": self.spec.describe(),
                     "logit_scale": self.logit_scale, "classes": list(CLASSES)}
        if self.thresholds is not None:
            described["thresholds"] = {"values": self.thresholds.values, **self.thresholds.source}
        return described

    def predict(self, path: str | Path, *, series: str | None = None, metadata: str | Path | None = None,
                saliency: bool = False, tokens: bool = False) -> Prediction:
        """One scan (a NIfTI file or a DICOM series folder) -> its Prediction; ScanError when unreadable. metadata:
        a CT-RATE metadata CSV whose row for the file gives its slope/intercept and spacing (CT-RATE v1 files)."""
        sources = find_scans([path], series, metadata=None if metadata is None else [metadata])
        if len(sources) != 1:
            raise ValueError(f"{path}: holds {len(sources)} scans; use predict_many(find_scans([...]))")
        return next(iter(self.predict_many(sources, saliency=saliency, tokens=tokens)))

    def prepare(self, source: ScanSource, name: str, *, saliency: bool) -> _Prepared:
        """Read and preprocess one scan: (1, D, H, W) model input as reaf.data.formats loads a layout-B volume."""
        item = _Prepared(source, name)
        start = time.perf_counter()
        hu = read_hu(source)
        item.geometry = read_geometry(source) if saliency else None
        item.timing["read_s"] = time.perf_counter() - start
        start = time.perf_counter()
        try:
            item.volume = T.model_input(hu, self.spec.size, self.spec.hu_min, self.spec.hu_max, self.spec.mode)
        except ValueError as err:
            raise ScanError(f"{source.label}: {err}") from err
        item.resampled = tuple(hu.shape)  # type: ignore[assignment]
        item.timing["preprocess_s"] = time.perf_counter() - start
        return item

    def predict_many(self, sources: Iterable[ScanSource], *, saliency: bool = False, tokens: bool = False,
                     skip_bad: bool = False) -> Iterator[Prediction]:
        """Predictions in the order of `sources`, encoded in batches of batch_size. An unreadable scan raises
        ScanError ('<path>: <cause>'), or with skip_bad comes back as a Prediction with `error` set."""
        pending: list[_Prepared] = []
        names: set[str] = set()
        for source in sources:
            name = _unique(source.stem, names)
            try:
                pending.append(self.prepare(source, name, saliency=saliency))
            except ScanError as err:
                if not skip_bad:
                    raise
                log.warning("skipped %s", err)
                pending.append(_Prepared(source, name, error=str(err)))
            if sum(p.volume is not None for p in pending) >= self.batch_size:
                yield from self._encode(pending, saliency=saliency, tokens=tokens)
                pending = []
        yield from self._encode(pending, saliency=saliency, tokens=tokens)

    @torch.inference_mode()
    def _encode(self, items: list[_Prepared], *, saliency: bool, tokens: bool) -> Iterator[Prediction]:
        good = [p for p in items if p.volume is not None]
        embeddings, store, encode_s = np.zeros((0, 0), np.float32), {}, 0.0
        if good:
            start = time.perf_counter()
            batch = torch.stack([p.volume for p in good]).to(self.device)
            with capture(self.model.visual.trunk, saliency=saliency, tokens=tokens) as store:
                embeddings = self.model.encode_image(batch).float().cpu().numpy()
            require_finite(embeddings, "image embeddings (a NaN volume or NaN weights?)", [p.source.label for p in good])
            encode_s = (time.perf_counter() - start) / len(good)
        probs = zero_shot_probabilities(embeddings, self.prompts, self.logit_scale) if good else None
        row = {id(p): i for i, p in enumerate(good)}
        for item in items:
            if item.volume is None:
                yield Prediction(item.source.label, item.name, error=item.error, timing=item.timing)
                continue
            i = row[id(item)]
            yield self._result(item, embeddings[i], probs[i], {k: v[i] for k, v in store.items()}, encode_s)

    def _result(self, item: _Prepared, embedding: np.ndarray, probs: np.ndarray, captured: dict[str, torch.Tensor],
                encode_s: float) -> Prediction:
        out = Prediction(item.source.label, item.name, dict(zip(CLASSES, probs.tolist())), embedding,
                         timing={**item.timing, "encode_s": encode_s})
        if self.thresholds is not None:
            out.findings = self.thresholds.findings(out.probabilities)
        trunk = self.model.visual.trunk
        if "tokens" in captured:
            out.tokens = captured["tokens"].float().cpu().reshape(*trunk.grid, -1).clone()
        if "scan" in captured:
            out.saliency_grid = {lvl: captured[lvl].cpu().numpy().astype(bool) for lvl in ("scan", "slice")}
            label = grid_to_voxels(kept_label_map(out.saliency_grid), item.geometry, item.resampled, self.spec,
                                   trunk.cfg.patch_size)
            out.saliency = saliency_image(label, item.geometry)
            out.model_input = item.volume[0].numpy()
        return out


def _unique(stem: str, taken: set[str]) -> str:
    """`stem`, or stem_2, stem_3, ... when an earlier scan of the run had it; characters unsafe in file names
    become '_'."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "scan"
    name, k = safe, 1
    while name in taken:
        k += 1
        name = f"{safe}_{k}"
    taken.add(name)
    return name
