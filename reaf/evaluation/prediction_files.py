"""reaf.predict's outputs: predictions.csv, embeddings.pt (the format reaf.search reads), per-scan saliency NIfTI +
PNG and token maps, and the printed table; every file written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reaf import atomic
from reaf.data.csv_tables import CLASSES
from reaf.evaluation.predictor import Prediction, Predictor

PREDICTIONS, EMBEDDINGS, SALIENCY_DIR, TOKENS_DIR = "predictions.csv", "embeddings.pt", "saliency", "tokens"


class PredictionWriter:
    """Takes Predictions one by one (per-scan files written at once, heavy fields dropped), then `finish` writes
    the tables. predictions.csv: `source`, the 18 CLASSES' probabilities, with thresholds `findings` (the classes
    over theirs, '; '-joined), `error` (empty unless skipped)."""

    def __init__(self, out: str | Path, predictor: Predictor, inputs: list[str],
                 metadata: list[str] | None = None) -> None:
        self.out, self.predictor, self.inputs, self.metadata = Path(out), predictor, inputs, metadata or []
        self.rows: list[dict[str, Any]] = []
        self.embeddings: list[np.ndarray] = []
        self.names: list[str] = []
        self.skipped: list[dict[str, str]] = []
        self.timing: dict[str, list[float]] = {}
        self.files: dict[str, list[str]] = {"saliency": [], "tokens": []}

    def add(self, pred: Prediction) -> Prediction:
        """Record `pred`, write its saliency/token files; returns it without its heavy fields."""
        self.rows.append({"source": pred.source, **{c: pred.probabilities.get(c, np.nan) for c in CLASSES},
                          "findings": "; ".join(pred.findings or []), "error": pred.error or ""})
        for key, value in pred.timing.items():
            self.timing.setdefault(key, []).append(value)
        if pred.error is not None:
            self.skipped.append({"name": pred.source, "cause": pred.error})
            return pred
        self.embeddings.append(pred.embedding)
        self.names.append(pred.source)
        if pred.saliency is not None:
            self._write_saliency(pred)
        if pred.tokens is not None:
            self._write_tokens(pred)
        pred.saliency, pred.model_input, pred.tokens = None, None, None
        return pred

    def _write_saliency(self, pred: Prediction) -> None:
        from reaf.evaluation.plots import plot_saliency
        from reaf.evaluation.saliency_map import save_saliency

        path = self.out / SALIENCY_DIR / f"{pred.name}.nii.gz"
        save_saliency(pred.saliency, path)
        plot_saliency(pred.model_input, pred.saliency_grid, path.with_name(f"{pred.name}.png"),
                      title=f"{pred.source}: regions kept (model input)")
        self.files["saliency"].append(str(path))

    def _write_tokens(self, pred: Prediction) -> None:
        from safetensors.torch import save_file

        path = self.out / TOKENS_DIR / f"{pred.name}.safetensors"
        with atomic.atomic_output(path) as tmp:
            save_file({"tokens": pred.tokens.contiguous()}, str(tmp),
                      metadata={"source": pred.source, "layout": "(d, h, w, C) final normed patch tokens"})
        self.files["tokens"].append(str(path))

    def finish(self) -> dict[str, Any]:
        """predictions.csv and (when any scan was encoded) embeddings.pt; returns the run's summary."""
        from reaf.evaluation.embeddings import file_fingerprint, save_embeddings
        from reaf.model.bert_folder import describe_folder

        findings = ["findings"] if self.predictor.thresholds is not None else []
        table = pd.DataFrame(self.rows, columns=["source", *CLASSES, *findings, "error"])
        atomic.write_text(self.out / PREDICTIONS, table.to_csv(index=False))
        model = self.predictor.model
        if self.embeddings:
            checkpoint = self.predictor.checkpoint
            encoded = {"names": self.names, "scan_ids": self.names, "reports": None, "text": None, "labels": None,
                       "image": np.stack(self.embeddings), "logit_scale": self.predictor.logit_scale,
                       "skipped": self.skipped}
            meta = {"checkpoint": None if checkpoint is None else file_fingerprint(checkpoint),
                    "model_config": model.cfg.to_dict(),
                    "data": {"source": "reaf.predict", "inputs": self.inputs, "metadata": self.metadata,
                             **self.predictor.describe()},
                    "text_tower": describe_folder(getattr(model, "bert_path", None))}
            save_embeddings(self.out / EMBEDDINGS, encoded, key=None, meta=meta)
        thresholds = self.predictor.thresholds
        return {"thresholds": None if thresholds is None else thresholds.source,
                "predicted": len(self.names), "skipped": len(self.skipped),
                "mean_s": {k: float(np.mean(v)) for k, v in self.timing.items()}, **self.files}


def summary_lines(rows: list[Prediction], summary: dict[str, Any], out: Path, top: int = 3) -> list[str]:
    """The printed table: each scan with its `top` findings (or its error), then counts and mean times."""
    width = min(60, max([len(p.source) for p in rows] + [4]))
    thresholds = summary.get("thresholds")
    shown_as = "findings over their thresholds" if thresholds else "top findings"
    lines = [f"{'scan':{width}s}  {shown_as} (zero-shot probability)"]
    for pred in rows:
        shown = pred.source if len(pred.source) <= width else "..." + pred.source[-(width - 3):]
        if pred.error:
            found = f"ERROR {pred.error}"
        elif pred.findings is not None:  # thresholds given: the findings, each with its probability
            found = ", ".join(f"{c} {pred.probabilities[c]:.3f}" for c in pred.findings) or "no finding over threshold"
        else:
            found = ", ".join(f"{c} {p:.3f}" for c, p in pred.top(top))
        lines.append(f"{shown:{width}s}  {found}")
    times = ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in summary["mean_s"].items())
    lines += ["", f"{summary['predicted']} scan(s) predicted, {summary['skipped']} skipped (unreadable)"
              + (f"; per scan: {times}" if times else ""), f"outputs: {out / PREDICTIONS}"
              + (f", {out / EMBEDDINGS}" if summary["predicted"] else "")]
    if thresholds:
        lines.append(f"thresholds: {thresholds['rule']} on {thresholds['split']} (N = {thresholds['N']}), from "
                     f"{thresholds['results']}" + (f"; none for {', '.join(thresholds['classes_without'])}"
                                                   if thresholds["classes_without"] else ""))
    return lines
