"""Evaluation presentation: ROC curves, AUC bars with CIs, recall@K curves, saliency overlays (Agg PNGs), the table."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from reaf.atomic import atomic_output  # noqa: E402
from reaf.data.csv_tables import CLASSES
from reaf.evaluation.retrieval import MAP_KS, RECALL_KS, recall_curve  # noqa: E402

DPI = 100


def save_figure(fig: Any, path: Path) -> None:
    """Save a figure as PNG atomically (reaf.atomic) and close it."""
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_roc_curves(labels: np.ndarray, probs: np.ndarray, per_class: dict, path: Path, title: str) -> None:
    """One ROC panel per class: labels/probs (N, 18) in CLASSES order, per_class = results' per-class metrics."""
    cols = 6
    rows = -(-len(CLASSES) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.4 * rows), squeeze=False, constrained_layout=True)
    for ax, (c, name) in zip(axes.ravel(), enumerate(CLASSES)):
        known = np.isfinite(labels[:, c])
        entry = per_class[name]
        ax.plot([0, 1], [0, 1], color="0.7", linewidth=0.8, linestyle="--")
        auc = "undefined"
        if entry["auc"] is not None:
            fpr, tpr, _ = roc_curve(labels[known, c], probs[known, c])
            ax.plot(fpr, tpr, linewidth=1.8, clip_on=False)
            auc = f"{entry['auc']:.3f}"
        ax.set_title(f"{textwrap.shorten(name, 34)}\nAUC {auc} (n+={entry['n_pos']}, n-={entry['n_neg']})", fontsize=8)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("false positive rate", fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("true positive rate", fontsize=7)
    for ax in axes.ravel()[len(CLASSES) :]:
        ax.axis("off")
    fig.suptitle(title)
    save_figure(fig, path)


def plot_auc_bars(block: dict, path: Path, title: str) -> None:
    """Horizontal AUC bars with bootstrap 95% CIs per class and the macro mean (one results['classification'][k])."""
    names = [n for n, e in block["per_class"].items() if e["auc"] is not None]
    auc = np.array([block["per_class"][n]["auc"] for n in names])
    ci = np.array([block["per_class"][n]["auc_ci95"] or [a, a] for n, a in zip(names, auc)]).reshape(-1, 2)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    y = np.arange(len(names))
    ax.barh(y, auc, xerr=np.abs(ci.T - auc), color="tab:blue", alpha=0.8, capsize=3)
    if block["mean"]["auc"] is not None:
        ax.axvline(block["mean"]["auc"], color="tab:red", label=f"mean {block['mean']['auc']:.3f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.axvline(0.5, color="0.5", linestyle="--", linewidth=0.8)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("AUROC (bars: bootstrap 95% CI)")
    ax.set_title(title)
    ax.invert_yaxis()
    save_figure(fig, path)


def plot_recall_curves(ranks: dict[str, dict[str, np.ndarray]], path: Path, max_k: int = 100) -> None:
    """R@K for K = 1..max_k of every pool and direction: ranks[pool][direction] = (Q,) 1-based ranks."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    colours = {"report_to_volume": "tab:blue", "volume_to_report": "tab:orange"}
    longest = 1
    for pool, by_direction in ranks.items():
        for direction, r in by_direction.items():
            k = min(max_k, len(r))
            longest = max(longest, k)
            style = "-" if pool == "dedup" else "--"
            ax.plot(
                np.arange(1, k + 1),
                recall_curve(r, k),
                style,
                color=colours.get(direction),
                label=f"{pool} {direction} (N={len(r)})",
            )
    ax.set_xscale("log")
    ticks = [k for k in (1, 2, 5, 10, 20, 50, 100) if k <= longest]
    ax.set_xticks(ticks, [str(k) for k in ticks])
    ax.minorticks_off()
    ax.set_xlabel("K")
    ax.set_ylabel("recall@K")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("report <-> volume retrieval (solid: dedup, dashed: dup_all)")
    save_figure(fig, path)


def plot_few_shot(few_shot: dict, zero_shot_auc: float | None, path: Path, *, probe_auc: float | None = None) -> None:
    """Mean AUC (18 classes) against k with the spread over draws (results["few_shot"]), zero-shot (and the full
    linear probe) as horizontal lines."""
    ks = [int(k) for k in few_shot["by_k"]]
    blocks = [few_shot["by_k"][str(k)]["18"] for k in ks]
    points = [(k, b["mean_auc"], b["sd_auc"] or 0.0) for k, b in zip(ks, blocks) if b["mean_auc"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if points:
        k, mean, sd = (np.array(v, dtype=float) for v in zip(*points))
        ax.errorbar(k, mean, yerr=sd, marker="o", capsize=3, label=f"few-shot ({few_shot['draws']} draws, ± sd)")
    if zero_shot_auc is not None:
        ax.axhline(zero_shot_auc, color="tab:red", linestyle="--", label=f"zero-shot {zero_shot_auc:.3f}")
    if probe_auc is not None:
        ax.axhline(probe_auc, color="tab:green", linestyle=":", label=f"linear probe, whole train split {probe_auc:.3f}")
    ax.axhline(0.5, color="0.6", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("k positive + k negative training volumes per class")
    ax.set_ylabel("mean AUROC, 18 classes")
    ax.set_ylim(0.4, 1.0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("few-shot linear probe on frozen image embeddings")
    save_figure(fig, path)


def write_plots(results: dict, encoded: dict, probs: dict[str, np.ndarray], ranks: dict, results_dir: Path) -> list:
    """Every evaluation PNG under results_dir/plots; returns their paths relative to results_dir."""
    written = []
    plots_dir = results_dir / "plots"
    by_template = results["classification_by_template"] or {results["template"]: results["classification"]}
    for template, blocks in by_template.items():
        if blocks is None:
            continue
        name = f"plots/roc_{template}.png"
        plot_roc_curves(
            encoded["labels"],
            probs[template],
            blocks["18"]["per_class"],
            results_dir / name,
            f"zero-shot ROC, template {template}",
        )
        written.append(name)
        for key in ("18", "16"):
            name = f"plots/auc_bars_{template}_{key}.png"
            plot_auc_bars(blocks[key], results_dir / name, f"AUROC, {key} classes, template {template}")
            written.append(name)
    plot_recall_curves(ranks, plots_dir / "retrieval_recall.png")
    written.append("plots/retrieval_recall.png")
    return written


def upsample_mask(mask: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A patch-grid mask (d, h, w) repeated to voxels `shape` (D, H, W), each a multiple of the grid."""
    factors = [s // g for s, g in zip(shape, mask.shape)]
    return mask.repeat(factors[0], 0).repeat(factors[1], 1).repeat(factors[2], 2)


def plot_saliency(
    volume: np.ndarray, masks: dict[str, np.ndarray], path: Path, *, title: str, n_slices: int = 4
) -> None:
    """Axial slices of `volume` (D, H, W) with the kept regions of each mask level (d, h, w) bool overlaid.

    Slices are spread evenly over the depth range that holds kept regions; columns are the volume, the
    scan-level regions and the slice-level regions. Slices are drawn in stored voxel order (row = y index,
    no reorientation), as the model sees them.
    """
    levels = list(masks)
    voxels = {level: upsample_mask(np.asarray(m, bool), volume.shape) for level, m in masks.items()}
    coverage = sum(v.sum(axis=(1, 2)) for v in voxels.values())
    candidates = np.flatnonzero(coverage) if coverage.any() else np.arange(volume.shape[0])
    picks = np.unique(candidates[np.linspace(0, len(candidates) - 1, n_slices).round().astype(int)])
    fig, axes = plt.subplots(
        len(picks), 1 + len(levels), figsize=(3 * (1 + len(levels)), 3 * len(picks)), squeeze=False
    )
    colours = {"scan": "Reds", "slice": "Blues"}
    for row, z in enumerate(picks):
        axes[row, 0].imshow(volume[z], cmap="gray")
        axes[row, 0].set_ylabel(f"slice z={z}", fontsize=8)
        for col, level in enumerate(levels, start=1):
            axes[row, col].imshow(volume[z], cmap="gray")
            overlay = np.ma.masked_where(~voxels[level][z], voxels[level][z].astype(float))
            axes[row, col].imshow(overlay, cmap=colours.get(level, "Greens"), alpha=0.45, vmin=0, vmax=1)
            if row == 0:
                axes[row, col].set_title(f"{level}-level kept regions", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "  -  " if value is None else f"{value:.{digits}f}"


def classification_table(block: dict, title: str) -> list[str]:
    """Lines of a per-class table (AUC [95% CI], argmax balanced accuracy / weighted F1, CT-CLIP accuracy)."""
    lines = [
        title,
        f"{'class':36s} {'n_pos':>5s} {'AUC':>6s} {'95% CI':>15s} {'bal.acc':>7s} {'w.F1':>6s} {'acc@ROC*':>8s}",
    ]
    rows = [*block["per_class"].items(), (f"mean ({len(block['classes_in_mean'])} classes)", block["mean"])]
    for name, entry in rows:
        ci = entry["auc_ci95"]
        argmax, ctclip = entry["argmax"] or {}, entry["ctclip"] or {}
        lines.append(
            f"{name[:36]:36s} {entry.get('n_pos', ''):>5} {_fmt(entry['auc']):>6s} "
            f"{'[' + _fmt(ci[0]) + ', ' + _fmt(ci[1]) + ']' if ci else '-':>15s} "
            f"{_fmt(argmax.get('balanced_accuracy')):>7s} {_fmt(argmax.get('weighted_f1')):>6s} "
            f"{_fmt(ctclip.get('accuracy')):>8s}"
        )
    return lines


def summary_table(results: dict) -> str:
    """The readable end-of-run table: classification (18 and 16 classes) and retrieval per pool and direction."""
    lines = []
    if results["classification"] is not None:
        for key in ("18", "16"):
            lines += classification_table(
                results["classification"][key],
                f"zero-shot, {key} classes (template {results['template']}); acc@ROC* = threshold chosen on this set",
            )
            lines.append("")
    lines.append(
        f"{'retrieval':34s} {'N':>5s} "
        + " ".join(f"{'R@' + str(k):>6s}" for k in RECALL_KS)
        + f" {'median':>6s} {'mean':>7s}"
    )
    for pool, block in results["retrieval"].items():
        for direction in ("report_to_volume", "volume_to_report"):
            entry = block[direction]
            lines.append(
                f"{pool + ' ' + direction:34s} {entry['N']:>5d} "
                + " ".join(f"{_fmt(entry[f'R@{k}']):>6s}" for k in RECALL_KS)
                + f" {entry['median_rank']:>6.1f} {entry['mean_rank']:>7.1f}"
            )
        if "volume_to_volume" in block:
            v2v = block["volume_to_volume"]
            lines.append(
                f"{pool + ' volume_to_volume':34s} {v2v['N']:>5d} "
                + " ".join(f"MAP@{k} {_fmt(v2v[f'MAP@{k}'])}" for k in MAP_KS)
            )
    return "\n".join(lines)


def explain_volume(model: Any, volume: Any, path: Path, *, title: str, device: str = "cpu") -> dict[str, np.ndarray]:
    """Saliency picture of one volume (1, D, H, W): the regions the enhancer keeps at each level, on axial slices.

    Returns the patch-grid masks {"scan", "slice"} -> (d, h, w) bool that were drawn.
    """
    import torch

    from reaf.dist import unwrap

    trunk = unwrap(model).visual.trunk
    with torch.inference_mode():
        masks = trunk.saliency_masks(volume[None].to(device))
    grids = {level: m[0].cpu().numpy().astype(bool) for level, m in masks.items()}
    plot_saliency(volume[0].float().cpu().numpy(), grids, path, title=title)
    return grids
