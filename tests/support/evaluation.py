"""A labelled layout-B evaluation split of real stage2 volumes (tiny input size)."""

import json

import numpy as np
import pandas as pd
import torch

from reaf.data.csv_tables import CLASSES
from reaf.data.formats import save_stage2

# scan valid_1_a has two reconstructions sharing one report; valid_2_a and valid_2_b belong to one patient
NAMES = ["valid_1_a_1", "valid_1_a_2", "valid_2_a_1", "valid_2_b_1", "valid_3_a_1", "valid_4_a_1", "valid_5_a_1"]


def write_split(root, seed=0):
    """A layout-B split folder with real stage2 .pt.gz volumes, reports.json and labels.csv; returns its path."""
    split = root / "test"
    (split / "volumes").mkdir(parents=True)
    (split / "reports").mkdir()
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    labels = (rng.random((len(NAMES), len(CLASSES))) < 0.4).astype(int)
    labels[:2, :3] = [[1, 0, 1], [1, 0, 1]]
    labels[2, :3] = [0, 1, 0]
    labels[1] = labels[0]  # sibling reconstructions share labels and report
    reports = {}
    for i, name in enumerate(NAMES):
        save_stage2(split / "volumes" / f"{name}.pt.gz", torch.randn((1, 32, 96, 96), generator=g))
        found = [c.lower() for c, y in zip(CLASSES, labels[i]) if y]
        reports[name] = f"Findings: {', '.join(found) or 'no abnormality'}. Impressions: case {name[:-2]}."
    (split / "reports" / "reports.json").write_text(json.dumps(reports))
    table = pd.DataFrame(labels, columns=CLASSES)
    table.insert(0, "VolumeName", [f"{n}.nii.gz" for n in NAMES])
    table.to_csv(split / "labels.csv", index=False)
    return split


def tiny_checkpoint(root, seed=0):
    """The tiny model (seeded, eval mode) and its checkpoint root/ckpt.pt in our format."""
    from reaf import create_model

    torch.manual_seed(seed)
    model = create_model("tiny").eval()
    ckpt = root / "ckpt.pt"
    torch.save({"state_dict": model.state_dict(), "config": {"model": model.cfg.to_dict()}}, ckpt)
    return model, ckpt
