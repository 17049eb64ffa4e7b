"""Per-class decision thresholds for reaf.predict, taken from a zero_shot.py results.json of the same model: the
ROC-corner threshold (results.json's `ctclip` block) each class got on that labelled split. Chosen on a validation
split and applied to new scans, they turn probabilities into findings; chosen on the split one reports, they are the
test-set tuning the protocol warns about, so results.json's split is recorded with every use.

The results must come from the same weights, the same prompts (protocol, template, v1 pairs) and the same input
(window, fit, size) as the predictor's: a threshold on another model's probabilities means nothing, so any difference
is refused, naming it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reaf.data.csv_tables import CLASSES


@dataclass(frozen=True)
class Thresholds:
    """class -> threshold (a probability above it is a finding, as results.json's ctclip metrics count positives);
    `source` says where they were chosen."""

    values: dict[str, float]
    source: dict[str, Any]

    def findings(self, probabilities: dict[str, float]) -> list[str]:
        """The classes whose probability is above their threshold, in CLASSES order."""
        return [c for c in CLASSES if c in self.values and probabilities.get(c, float("nan")) > self.values[c]]


def weights_sha256(checkpoint: Path) -> set[str]:
    """The sha256 a results.json of these weights may record: the checkpoint file's or the weights folder's own, and
    for a folder (reaf.export) also that of the checkpoint it was exported from."""
    from reaf.evaluation.embeddings import file_fingerprint

    shas = {file_fingerprint(checkpoint)["sha256"]}
    if checkpoint.is_dir():
        from reaf.model.pretrained import read_folder_config

        source = read_folder_config(checkpoint).get("source_checkpoint") or {}
        if source.get("sha256"):
            shas.add(source["sha256"])
    return shas


def thresholds_from_results(results: dict[str, Any], where: str, *, weights: set[str], template: str,
                            input_spec: dict[str, Any]) -> Thresholds:
    """The per-class thresholds of a results.json dict (read from `where`) for a model whose weights have one of the
    sha256 in `weights`, prompted with `template`'s v1 pairs on `input_spec` (InputSpec.describe()); ValueError
    naming `where` and the difference otherwise."""
    from reaf.evaluation.protocol import PROTOCOL_VERSION

    recorded = (results.get("checkpoint") or {}).get("sha256")
    if recorded not in weights:
        raise ValueError(f"{where}: computed for checkpoint sha256 {str(recorded)[:12]}... "
                         f"({(results.get('checkpoint') or {}).get('path')}), not these weights")
    wanted = {"protocol_version": PROTOCOL_VERSION, "template": template, "prompt set": "v1", "input": input_spec}
    found = {"protocol_version": results.get("protocol_version"), "template": results.get("template"),
             "prompt set": (results.get("prompt_set") or {"name": "v1"}).get("name"),
             "input": (results.get("data") or {}).get("input")}
    differ = [f"{key} {found[key]!r} (the predictor's: {wanted[key]!r})" for key in wanted if found[key] != wanted[key]]
    if differ:
        raise ValueError(f"{where}: its probabilities are not the predictor's: {'; '.join(differ)}")
    per_class = ((results.get("classification") or {}).get("18") or {}).get("per_class") or {}
    values = {c: float(per_class[c]["ctclip"]["threshold"]) for c in CLASSES
              if ((per_class.get(c) or {}).get("ctclip") or {}).get("threshold") is not None}
    if not values:
        raise ValueError(f"{where}: holds no per-class threshold (a split where no class has both labels?)")
    data = results.get("data") or {}
    source = {"results": where, "split": data.get("source"), "N": data.get("N"), "template": template,
              "input": input_spec, "rule": "each class's ROC corner (the point nearest (0, 1), results.json's ctclip "
              "block)", "classes_without": [c for c in CLASSES if c not in values]}
    return Thresholds(values, source)


def read_thresholds(path: str | Path, *, checkpoint: Path | None, template: str, input_spec: dict[str, Any]
                    ) -> Thresholds:
    """The thresholds of results.json `path` for a predictor of `checkpoint` (None: a model object, whose weights
    cannot be checked, refused), `template` and `input_spec`; ValueError naming the file and the difference."""
    from reaf.model.pretrained import read_results

    if checkpoint is None:
        raise ValueError(f"{path}: thresholds need the predictor's checkpoint to check they belong to its weights")
    return thresholds_from_results(read_results(path), str(path), weights=weights_sha256(Path(checkpoint)),
                                   template=template, input_spec=input_spec)


def recorded_thresholds(folder: Path) -> Thresholds | None:
    """The thresholds a weights folder's config.json records (reaf.export --results), or None."""
    from reaf.model.pretrained import read_folder_config

    recorded = read_folder_config(folder).get("thresholds")
    if not recorded:
        return None
    return Thresholds({c: float(v) for c, v in recorded["values"].items()},
                      {k: v for k, v in recorded.items() if k != "values"})
