"""Normal chest anatomy of the phantom (body, lungs, mediastinum, heart, vessels, airways, bone) and rendering to HU."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from reaf.synthetic.phantom import (
    AIR,
    BONE,
    FAT,
    HU_MAX,
    HU_MIN,
    LUNG,
    MARROW,
    MEDIASTINAL_FAT,
    ORGAN,
    SOFT,
    TABLE,
    Box,
    Capsule,
    Ellipsoid,
    Geometry,
    Grid,
    Shape,
    Vec,
    paint,
)

LONG = 1e4  # half-length (mm) of structures running through the whole volume along z


@dataclass(frozen=True)
class Anatomy:
    """One patient's chest in mm (RAS+, origin at the volume centre); findings may set heart_scale."""

    body: tuple[float, float]  # semi-axes (x, y) of the body outline
    body_cy: float
    fat: float  # subcutaneous fat thickness
    muscle: float  # chest wall thickness inside the fat
    mediastinum: float  # half-width of the mediastinum
    base_z: float  # lowest lung point (costophrenic angles)
    dome: float  # height of the diaphragm domes above base_z
    carina_z: float
    heart_offset: Vec  # heart centre relative to (0, cavity centre, top of the domes)
    heart_radii: Vec
    heart_scale: float = 1.0

    @property
    def cavity(self) -> tuple[float, float]:
        """Semi-axes of the thoracic cavity (the posterior wall is thicker: paraspinal muscles)."""
        return self.body[0] - self.fat - self.muscle, self.body[1] - self.fat - self.muscle - 8.0

    @property
    def cavity_cy(self) -> float:
        return self.body_cy + 8.0

    @property
    def back(self) -> float:
        """y of the posterior cavity wall (dependent side when supine)."""
        return self.cavity_cy - self.cavity[1]

    @property
    def front(self) -> float:
        return self.cavity_cy + self.cavity[1]

    def lung_centre_x(self, side: str) -> float:
        """x of the middle of the right ("r") or left ("l") lung."""
        x = (self.mediastinum + self.cavity[0]) / 2
        return x if side == "r" else -x

    def zone(self, name: str, side: str) -> tuple[float, float]:
        """z range (mm) of the "upper", "middle" or "lower" lung zone of one side, above that side's dome."""
        top = self.base_z + self.dome + (4.0 if side == "r" else 0.0)
        ranges = {"lower": (top - 10.0, top + 16.0), "middle": (top + 12.0, top + 34.0), "upper": (top + 32.0, 40.0)}
        return ranges[name]

    @property
    def lung_half_width(self) -> float:
        return (self.cavity[0] - self.mediastinum) / 2

    @property
    def heart_centre(self) -> Vec:
        dx, dy, dz = self.heart_offset
        return dx, self.cavity_cy + dy, self.base_z + self.dome + dz

    @property
    def heart_size(self) -> Vec:
        return tuple(r * self.heart_scale for r in self.heart_radii)  # type: ignore[return-value]

    @property
    def spine(self) -> tuple[float, float]:
        """(y centre, radius) of the vertebral body."""
        return self.back + 4.0, 12.0

    @property
    def aorta(self) -> tuple[Vec, Vec]:
        """(x, y, radius) of the descending and the ascending aorta."""
        return (-18.0, self.back + 23.0, 10.0), (8.0, self.cavity_cy + 4.0, 12.0)

    @property
    def trachea(self) -> tuple[float, float]:
        return 0.0, self.back + 31.0


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy; all sizes in mm, about 0.6x an adult chest so it fits a 192 mm field of view."""
    u = rng.uniform
    return Anatomy(
        body=(u(76, 86), u(56, 63)),
        body_cy=u(0, 6),
        fat=u(5, 10),
        muscle=u(6, 9),
        mediastinum=u(13, 17),
        base_z=u(-44, -38),
        dome=u(13, 19),
        carina_z=u(4, 14),
        heart_offset=(u(-12, -8), u(10, 14), u(8, 12)),
        heart_radii=(u(25, 29), u(20, 23), u(21, 25)),
    )


def with_heart_scale(anatomy: Anatomy, scale: float) -> Anatomy:
    """The same anatomy with the heart's radii multiplied by ``scale`` (cardiomegaly)."""
    return dataclasses.replace(anatomy, heart_scale=scale)


def _dome_z(a: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """z of the diaphragm under each (x, y): two domes, the right one (liver) a little higher."""
    lx, rx, ry = a.lung_centre_x("r"), a.lung_half_width + 6.0, a.cavity[1]
    bump = np.clip(1.0 - ((np.abs(x) - lx) / rx) ** 2 - ((y - a.cavity_cy) / ry) ** 2, 0.0, 1.0)
    return a.base_z + (a.dome + np.where(x > 0, 4.0, 0.0)) * bump


def draw_sides(rng: np.random.Generator, bilateral: float = 0.25) -> tuple[str, list[str]]:
    """Laterality: ("bilateral", ["r", "l"]) with probability ``bilateral``, else right or left equally."""
    u = rng.random()
    if u < bilateral:
        return "bilateral", ["r", "l"]
    return ("right", ["r"]) if u < (1 + bilateral) / 2 else ("left", ["l"])


def in_lung(a: Anatomy, p: Vec, margin: float) -> bool:
    """Whether a sphere of ``margin`` mm around p lies in lung, clear of the heart, mediastinum and diaphragm."""
    x, y, z = p
    cx, cy = a.cavity
    if (x / (cx - margin)) ** 2 + ((y - a.cavity_cy) / (cy - margin)) ** 2 > 1 or abs(x) < a.mediastinum + margin:
        return False
    if z - margin < float(_dome_z(a, np.float32(x), np.float32(y))):
        return False
    hc, hr = a.heart_centre, a.heart_size
    return sum(((q - c) / (r + margin + 3.0)) ** 2 for q, c, r in zip(p, hc, hr)) > 1.0


def lung_point(rng: np.random.Generator, a: Anatomy, side: str, zone: str, margin: float) -> Vec:
    """A random point in the right ("r") or left ("l") lung within a z zone, at least ``margin`` mm inside it.

    The margin is relaxed step by step when the zone is crowded (e.g. a large heart fills the left lower zone);
    as a last resort the whole lung height is searched.
    """
    z_range = a.zone(zone, side)
    for (z0, z1), m in [(z_range, margin), (z_range, margin * 0.6), (z_range, 2.0), ((-40.0, 40.0), 2.0)]:
        for _ in range(200):
            x = a.lung_centre_x(side) + rng.uniform(-1, 1) * a.lung_half_width
            p = (x, a.cavity_cy + rng.uniform(-1, 1) * a.cavity[1], rng.uniform(z0, z1))
            if in_lung(a, p, m):
                return p
    raise RuntimeError(f"no lung point found in zone {zone} side {side}; anatomy {a}")


def _paint_trunk(vol: np.ndarray, grid: Grid, a: Anatomy) -> None:
    """Table, body wall, thoracic cavity (mediastinal fat, abdominal organs under the domes) and the two lungs."""
    (bx, by), (cx, cy) = a.body, a.cavity
    paint(vol, grid, Box(TABLE, lo=(-95.0, a.body_cy - by - 14, -LONG), hi=(95.0, a.body_cy - by - 8, LONG)))
    paint(vol, grid, Ellipsoid(FAT, centre=(0.0, a.body_cy, 0.0), radii=(bx, by, LONG)))
    inner = (bx - a.fat, by - a.fat, LONG)
    paint(vol, grid, Ellipsoid(SOFT, centre=(0.0, a.body_cy, 0.0), radii=inner))
    paint(vol, grid, Ellipsoid(MEDIASTINAL_FAT, centre=(0.0, a.cavity_cy, 0.0), radii=(cx, cy, LONG)))
    x, y, z = (ax.reshape(s) for ax, s in zip(grid.axes, ((-1, 1, 1), (1, -1, 1), (1, 1, -1))))
    cavity = ((x / cx) ** 2 + ((y - a.cavity_cy) / cy) ** 2) <= 1.0
    below = z <= _dome_z(a, x, y)
    vol[cavity & below] = ORGAN
    vol[cavity & ~below & (np.abs(x) > a.mediastinum)] = LUNG


def _paint_heart_and_vessels(vol: np.ndarray, grid: Grid, a: Anatomy) -> None:
    """Epicardial fat, heart, aorta, superior vena cava, trachea, main bronchi and oesophagus."""
    centre, size = a.heart_centre, a.heart_size
    paint(vol, grid, Ellipsoid(FAT, centre=centre, radii=tuple(r + 3.0 for r in size)))
    paint(vol, grid, Ellipsoid(SOFT, centre=centre, radii=size))
    (dx, dy, dr), (ux, uy, ur) = a.aorta
    paint(vol, grid, Ellipsoid(SOFT, centre=(dx, dy, 0.0), radii=(dr, dr, LONG)))
    top = centre[2] + 0.4 * size[2]
    paint(vol, grid, Capsule(SOFT, p0=(ux, uy, top), p1=(ux, uy, LONG), radius=ur))
    paint(vol, grid, Capsule(SOFT, p0=(ux + 13.0, uy + 2.0, top), p1=(ux + 13.0, uy + 2.0, LONG), radius=7.0))
    tx, ty = a.trachea
    paint(vol, grid, Capsule(SOFT, p0=(tx, ty, a.carina_z), p1=(tx, ty, LONG), radius=9.0))
    paint(vol, grid, Capsule(AIR, p0=(tx, ty, a.carina_z), p1=(tx, ty, LONG), radius=7.0))
    for side in (1.0, -1.0):
        end = (side * 34.0, ty - 2.0, a.carina_z - 22.0)
        paint(vol, grid, Capsule(SOFT, p0=(tx, ty, a.carina_z), p1=end, radius=6.5))
        paint(vol, grid, Capsule(AIR, p0=(tx, ty, a.carina_z), p1=end, radius=4.5))
    paint(vol, grid, Capsule(SOFT, p0=(0.0, ty - 6.0, a.base_z), p1=(0.0, ty - 6.0, a.carina_z - 4.0), radius=5.0))


def _paint_bone(vol: np.ndarray, grid: Grid, a: Anatomy) -> None:
    """Vertebral bodies with canal and spinous process, sternum, and ribs in the chest wall."""
    sy, sr = a.spine
    paint(vol, grid, Ellipsoid(BONE, centre=(0.0, sy, 0.0), radii=(sr, sr, LONG)))
    paint(vol, grid, Ellipsoid(MARROW, centre=(0.0, sy, 0.0), radii=(sr - 3.0, sr - 3.0, LONG)))
    paint(vol, grid, Box(BONE, lo=(-4.0, sy - sr - 16.0, -LONG), hi=(4.0, sy - sr - 2.0, LONG)))
    paint(vol, grid, Ellipsoid(SOFT, centre=(0.0, sy - sr - 6.0, 0.0), radii=(5.0, 5.0, LONG)))
    paint(vol, grid, Box(BONE, lo=(-9.0, a.front + 1.0, -LONG), hi=(9.0, a.front + a.muscle - 1.0, LONG)))
    x, y, z = (ax.reshape(s) for ax, s in zip(grid.axes, ((-1, 1, 1), (1, -1, 1), (1, 1, -1))))
    (cx, cy), wall = a.cavity, a.muscle
    norm = np.sqrt((x / (cx + 1.0)) ** 2 + ((y - a.cavity_cy) / (cy + 1.0)) ** 2)
    in_wall = (norm >= 1.0) & (norm <= 1.0 + (wall - 2.0) / cx) & (y < a.cavity_cy + 0.7 * cy)
    on_rib = np.mod(z - a.carina_z, 20.0) < 8.0
    vol[in_wall & on_rib] = BONE


def render(
    anatomy: Anatomy, shapes: list[Shape], geometry: Geometry, noise_sd: float, rng: np.random.Generator
) -> np.ndarray:
    """Render anatomy plus finding shapes to an int16 HU array of ``geometry.shape`` (nx, ny, nz).

    Gaussian noise of ``noise_sd`` HU is added inside the body and table; values are clipped to [-1024, 3071].
    """
    grid = Grid(geometry)
    vol = np.full(geometry.shape, AIR, dtype=np.float32)
    _paint_trunk(vol, grid, anatomy)
    for shape in shapes:
        if shape.stage == "early":
            paint(vol, grid, shape)
    _paint_heart_and_vessels(vol, grid, anatomy)
    _paint_bone(vol, grid, anatomy)
    lung = vol == LUNG
    right = (grid.axes[0] > 0).reshape(-1, 1, 1)
    masks = {"lung": lung, "lung_r": lung & right, "lung_l": lung & ~right}
    for shape in shapes:
        if shape.stage == "late":
            paint(vol, grid, shape, masks)
    body = vol != AIR
    noise = rng.standard_normal(vol.shape, dtype=np.float32) * np.float32(noise_sd)
    vol += noise * body
    return np.clip(np.rint(vol), HU_MIN, HU_MAX).astype(np.int16)
