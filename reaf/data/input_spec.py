"""The model input a volume is brought to: size, HU window and crop|resize (`InputSpec`), and the `--input-info` flag."""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass
class InputSpec:
    """The model input: size (D, H, W) voxels, HU window [hu_min, hu_max], and `crop` or `resize` to the size."""

    size: tuple[int, int, int]
    hu_min: float = -1150.0
    hu_max: float = 350.0
    mode: str = "crop"

    def __post_init__(self) -> None:
        self.size = tuple(int(s) for s in self.size)  # type: ignore[assignment]
        if len(self.size) != 3 or min(self.size) < 1:
            raise ValueError(f"input size must be 3 positive ints (D, H, W), got {self.size}")
        if not self.hu_min < self.hu_max:
            raise ValueError(f"--input-info needs MIN < MAX, got {self.hu_min} {self.hu_max}")
        if self.mode not in ("crop", "resize"):
            raise ValueError(f"--input-info mode must be crop or resize, got {self.mode!r}")

    @classmethod
    def from_args(cls, input_info: list[str] | None, size: tuple[int, int, int]) -> InputSpec:
        """`--input-info MIN MAX crop|resize` (None: defaults -1150 350 crop) at the model's input size."""
        if input_info is None:
            return cls(size=size)
        if len(input_info) != 3:
            raise ValueError(f"--input-info takes MIN MAX crop|resize, got {input_info}")
        return cls(size=size, hu_min=float(input_info[0]), hu_max=float(input_info[1]), mode=str(input_info[2]))

    def describe(self) -> dict:
        return {"size": list(self.size), "hu_min": self.hu_min, "hu_max": self.hu_max, "mode": self.mode}


def input_spec_for(input_info: list[str] | None, model) -> InputSpec:
    """The input an evaluation feeds `model`: --input-info when given (at the model's size), else the InputSpec the
    model records (`recorded_input`, set when it was read from a checkpoint or weights folder), else -1150 350 crop.
    Evaluating a model on another window or fit than it was trained with is a silent error this default avoids."""
    size = tuple(model.cfg.vision.img_size)
    if input_info is not None:
        return InputSpec.from_args(input_info, size)
    recorded = getattr(model, "recorded_input", None)
    return recorded if recorded is not None else InputSpec.from_args(None, size)


class _InputInfoAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        try:
            InputSpec.from_args(values, (1, 1, 1))
        except ValueError as err:
            parser.error(str(err))
        setattr(namespace, self.dest, list(values))


def add_input_info_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *,
                            recorded_default: bool = False) -> None:
    """The one declaration of `--input-info MIN MAX crop|resize`, checked as it is parsed (InputSpec.from_args);
    `recorded_default`: an evaluation's flag, whose default is the input the checkpoint records (input_spec_for)."""
    default = None if recorded_default else ["-1150", "350", "crop"]
    shown = "; default: the one the checkpoint records, else -1150 350 crop" if recorded_default else ""
    parser.add_argument("--input-info", nargs=3, default=default, metavar=("MIN", "MAX", "MODE"),
                        action=_InputInfoAction, help=f"HU window and fit mode (crop|resize{shown})")
