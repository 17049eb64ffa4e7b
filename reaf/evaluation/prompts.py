"""Zero-shot prompts of protocol v1: the 18 CT-RATE classes, their organs, templates and prompt pairs."""

from __future__ import annotations

from reaf.data.csv_tables import CLASSES

TEMPLATE_MODES = ("volume", "organ", "both")

# The 18 classes in label-CSV order, each with (organ, negative finding, positive finding) for the organ template.
# The wording follows the reference (HLIP/REAF zeroshot metadata), including "Not atelectatic".
_CLASS_TABLE: tuple[tuple[str, str, str, str], ...] = (
    ("Medical material", "volume", "Not medical material", "Medical material"),
    ("Arterial wall calcification", "aorta", "Not arterial wall calcification", "Arterial wall calcification"),
    ("Cardiomegaly", "heart", "Not cardiomegaly", "Cardiomegaly"),
    ("Pericardial effusion", "heart", "Not pericardial effusion", "Pericardial effusion"),
    (
        "Coronary artery wall calcification",
        "heart",
        "Not coronary artery wall calcification",
        "Coronary artery wall calcification",
    ),
    ("Hiatal hernia", "esophagus", "Not hiatal hernia", "Hiatal hernia"),
    ("Lymphadenopathy", "mediastinum", "Not lymphadenopathy", "Lymphadenopathy"),
    ("Emphysema", "lung", "Not emphysema", "Emphysema"),
    ("Atelectasis", "lung", "Not atelectatic", "Atelectasis"),
    ("Lung nodule", "lung", "Not nodule", "Nodule"),
    ("Lung opacity", "lung", "Not opacity", "Opacity"),
    ("Pulmonary fibrotic sequela", "lung", "Not pulmonary fibrotic sequela", "Pulmonary fibrotic sequela"),
    ("Pleural effusion", "lung", "Not pleural effusion", "Pleural effusion"),
    ("Mosaic attenuation pattern", "lung", "Not mosaic attenuation pattern", "Mosaic attenuation pattern"),
    ("Peribronchial thickening", "lung", "Not peribronchial thickening", "Peribronchial thickening"),
    ("Consolidation", "lung", "Not consolidation", "Consolidation"),
    ("Bronchiectasis", "lung", "Not bronchiectasis", "Bronchiectasis"),
    (
        "Interlobular septal thickening",
        "lung",
        "Not interlobular septal thickening",
        "Interlobular septal thickening",
    ),
)

if [row[0] for row in _CLASS_TABLE] != CLASSES:
    raise ImportError("reaf.evaluation.prompts: the prompt table is out of step with reaf.data.csv_tables.CLASSES")
ORGANS: dict[str, str] = {row[0]: row[1] for row in _CLASS_TABLE}
ORGAN_PAIRS: dict[str, tuple[str, str]] = {row[0]: (row[2], row[3]) for row in _CLASS_TABLE}
# Without the organ in the sentence, the two lung findings named by a bare noun get their organ back.
VOLUME_PAIRS: dict[str, tuple[str, str]] = {
    **ORGAN_PAIRS,
    "Lung nodule": ("Not lung nodule", "Lung nodule"),
    "Lung opacity": ("Not lung opacity", "Lung opacity"),
}


def sentence(template: str, organ: str, finding: str) -> str:
    """One prompt sentence: "The {organ} shows: {finding}." (organ) or "The volume shows: {finding}." (volume)."""
    return f"The {'volume' if template == 'volume' else organ} shows: {finding}."


def class_prompts(template: str, classes: list[str] | None = None) -> dict[str, tuple[str, str]]:
    """{class: (negative sentence, positive sentence)} for template "volume" or "organ", in class order."""
    if template not in ("volume", "organ"):
        raise ValueError(f"template {template!r} must be 'volume' or 'organ' ('both' evaluates each)")
    pairs = VOLUME_PAIRS if template == "volume" else ORGAN_PAIRS
    out = {}
    for name in classes or CLASSES:
        if name not in pairs:
            raise ValueError(f"no prompt for class {name!r}; known classes: {CLASSES}")
        neg, pos = pairs[name]
        out[name] = (sentence(template, ORGANS[name], neg), sentence(template, ORGANS[name], pos))
    return out


def templates_for(mode: str) -> list[str]:
    """The templates a --zeroshot-template mode evaluates, primary first: both -> [volume, organ]."""
    if mode not in TEMPLATE_MODES:
        raise ValueError(f"--zeroshot-template {mode!r} is not one of {TEMPLATE_MODES}")
    return ["volume", "organ"] if mode == "both" else [mode]
