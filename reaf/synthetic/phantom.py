"""Chest CT phantom in HU: geometric primitives, patient anatomy, and rendering on an anisotropic voxel grid.

Coordinates are millimetres in RAS+ with the origin at the volume centre: +x is the patient's right, +y anterior,
+z superior. Arrays follow nibabel's convention, ``hu[i, j, k]`` is the voxel at (x_i, y_j, z_k).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

AIR, FAT, MEDIASTINAL_FAT, SOFT, LUNG, FLUID = -1000.0, -100.0, -110.0, 40.0, -820.0, 10.0
BONE, MARROW, ORGAN, TABLE = 800.0, 300.0, 55.0, 150.0
HU_MIN, HU_MAX = -1024, 3071
Vec = tuple[float, float, float]


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of one reconstruction: shape (nx, ny, nz) and spacing (sx, sy, sz) in mm."""

    shape: tuple[int, int, int]
    spacing: Vec


class Grid:
    """Voxel-centre coordinates (mm) of a Geometry, centred on 0, and bounding-box lookups."""

    def __init__(self, geometry: Geometry) -> None:
        self.shape = geometry.shape
        self.spacing = geometry.spacing
        self.axes = [((np.arange(n) - (n - 1) / 2) * s).astype(np.float32) for n, s in zip(self.shape, self.spacing)]

    def box(self, lo: Vec, hi: Vec) -> tuple[tuple[slice, slice, slice], list[np.ndarray]] | None:
        """Index slices of the voxels whose centres lie in [lo, hi] mm, and their broadcastable coordinates."""
        slices, coords = [], []
        for axis, (a, b, n, s) in enumerate(zip(lo, hi, self.shape, self.spacing)):
            i0 = max(int(np.ceil(a / s + (n - 1) / 2)), 0)
            i1 = min(int(np.floor(b / s + (n - 1) / 2)) + 1, n)
            if i1 <= i0:
                return None
            slices.append(slice(i0, i1))
            shape = [1, 1, 1]
            shape[axis] = i1 - i0
            coords.append(self.axes[axis][i0:i1].reshape(shape))
        return tuple(slices), coords  # type: ignore[return-value]


@dataclass(frozen=True)
class Shape:
    """A solid painted with one HU value; ``within`` restricts it to a tissue mask ("lung", "lung_r", "lung_l").

    ``stage`` "early" paints after lungs and mediastinal fat but before heart, vessels and bone; "late" paints last.
    ``clip`` intersects the shape with an axis-aligned box (e.g. the air above an air-fluid level).
    """

    hu: float
    within: str | None = field(default=None, kw_only=True)
    stage: str = field(default="late", kw_only=True)
    clip: tuple[Vec, Vec] | None = field(default=None, kw_only=True)  # extra (lo, hi) bounds in mm

    def bounds(self) -> tuple[Vec, Vec]:
        """(lo, hi) corners in mm of a box holding the shape."""
        raise NotImplementedError

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Boolean membership for broadcastable coordinate arrays (mm) of shapes (n,1,1), (1,m,1), (1,1,k)."""
        raise NotImplementedError

    def values(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray | float:
        """HU to paint: a scalar, or an array broadcastable like ``inside``."""
        return self.hu


@dataclass(frozen=True)
class Ellipsoid(Shape):
    centre: Vec
    radii: Vec

    def bounds(self) -> tuple[Vec, Vec]:
        return _sub(self.centre, self.radii), _add(self.centre, self.radii)

    def inside(self, x, y, z):
        (cx, cy, cz), (rx, ry, rz) = self.centre, self.radii
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0


@dataclass(frozen=True)
class Box(Shape):
    lo: Vec
    hi: Vec

    def bounds(self) -> tuple[Vec, Vec]:
        return self.lo, self.hi

    def inside(self, x, y, z):
        return np.broadcast_to(True, np.broadcast_shapes(x.shape, y.shape, z.shape))


@dataclass(frozen=True)
class Capsule(Shape):
    """All points within ``radius`` of the segment p0-p1 (tubes: airways, streaks, wires)."""

    p0: Vec
    p1: Vec
    radius: float

    def bounds(self) -> tuple[Vec, Vec]:
        lo = tuple(min(a, b) - self.radius for a, b in zip(self.p0, self.p1))
        hi = tuple(max(a, b) + self.radius for a, b in zip(self.p0, self.p1))
        return lo, hi  # type: ignore[return-value]

    def inside(self, x, y, z):
        p0, d = np.array(self.p0, np.float32), np.subtract(self.p1, self.p0).astype(np.float32)
        rel = (x - p0[0], y - p0[1], z - p0[2])
        t = np.clip((rel[0] * d[0] + rel[1] * d[1] + rel[2] * d[2]) / max(float(d @ d), 1e-6), 0.0, 1.0)
        dist2 = (rel[0] - t * d[0]) ** 2 + (rel[1] - t * d[1]) ** 2 + (rel[2] - t * d[2]) ** 2
        return dist2 <= self.radius**2


@dataclass(frozen=True)
class Ring(Shape):
    """An arc of a cylindrical wall around the z axis at (cx, cy): radii r_in..r_out, angles a0..a1 (rad), z0..z1."""

    cx: float
    cy: float
    z0: float
    z1: float
    r_in: float
    r_out: float
    a0: float
    a1: float

    def bounds(self) -> tuple[Vec, Vec]:
        r = self.r_out
        return (self.cx - r, self.cy - r, self.z0), (self.cx + r, self.cy + r, self.z1)

    def inside(self, x, y, z):
        r = np.sqrt((x - self.cx) ** 2 + (y - self.cy) ** 2)
        angle = np.mod(np.arctan2(y - self.cy, x - self.cx) - self.a0, 2 * np.pi)
        return (r >= self.r_in) & (r <= self.r_out) & (angle <= np.mod(self.a1 - self.a0, 2 * np.pi))


@dataclass(frozen=True)
class Lattice(Box):
    """Lines of ``thickness`` mm every ``period`` mm along x and y inside the box (a grid in every axial slice)."""

    period: float = 10.0
    thickness: float = 3.0

    def inside(self, x, y, z):
        on_x = np.mod(x - self.lo[0], self.period) < self.thickness
        on_y = np.mod(y - self.lo[1], self.period) < self.thickness
        return np.broadcast_to(on_x | on_y, np.broadcast_shapes(x.shape, y.shape, z.shape))


@dataclass(frozen=True)
class Checker(Box):
    """A 3-D checkerboard of ``cell`` mm cubes alternating between ``hu`` and ``hu2`` inside the box."""

    cell: float = 12.0
    hu2: float = -900.0

    def values(self, x, y, z):
        parity = sum(np.floor((c - lo) / self.cell).astype(np.int32) for c, lo in zip((x, y, z), self.lo)) % 2
        return np.where(parity == 0, np.float32(self.hu), np.float32(self.hu2))


@dataclass(frozen=True)
class PosteriorLayer(Shape):
    """Voxels within ``depth`` mm of the posterior wall of an elliptic cavity, tapering to nothing at ``z_top``.

    The cavity is x^2/cx^2 + (y-cy)^2/ry^2 <= 1; used for dependent fluid (pleural effusion when supine).
    """

    cx: float
    cy: float
    ry: float
    depth: float
    z_top: float
    taper: float = 30.0

    def bounds(self) -> tuple[Vec, Vec]:
        return (-self.cx, self.cy - self.ry, -1e4), (self.cx, self.cy - self.ry + self.depth, self.z_top)

    def inside(self, x, y, z):
        wall = self.cy - self.ry * np.sqrt(np.clip(1.0 - (x / self.cx) ** 2, 0.0, 1.0))
        depth = self.depth * np.clip((self.z_top - z) / self.taper, 0.0, 1.0)
        return y <= wall + depth


def _add(a: Vec, b: Vec) -> Vec:
    return tuple(p + q for p, q in zip(a, b))  # type: ignore[return-value]


def _sub(a: Vec, b: Vec) -> Vec:
    return tuple(p - q for p, q in zip(a, b))  # type: ignore[return-value]


def paint(vol: np.ndarray, grid: Grid, shape: Shape, masks: dict[str, np.ndarray] | None = None) -> None:
    """Set the voxels of ``vol`` (nx, ny, nz) inside ``shape`` (and inside its ``within`` mask) to its HU."""
    lo, hi = shape.bounds()
    if shape.clip is not None:
        lo, hi = tuple(map(max, lo, shape.clip[0])), tuple(map(min, hi, shape.clip[1]))
    found = grid.box(lo, hi)
    if found is None:
        return
    sl, (x, y, z) = found
    sel = shape.inside(x, y, z)
    if shape.within is not None:
        if masks is None or shape.within not in masks:
            raise ValueError(f"shape {type(shape).__name__} needs mask {shape.within!r}, which is not available")
        sel = sel & masks[shape.within][sl]
    sel = np.broadcast_to(sel, vol[sl].shape)
    value = shape.values(x, y, z)
    vol[sl][sel] = np.broadcast_to(value, vol[sl].shape)[sel] if isinstance(value, np.ndarray) else value


@dataclass(frozen=True)
class Finding:
    """One planted finding: its class, report words (side, size, lobe, details) and the shapes that show it."""

    cls: str = ""
    side: str | None = None  # "right" | "left" | "bilateral" | None
    size: str = ""
    lobe: str | None = None  # "upper" | "middle" | "lower"
    detail: dict = field(default_factory=dict)
    shapes: tuple[Shape, ...] = ()
    heart_scale: float = 1.0
