"""Pulmonary findings of the phantom (emphysema ... septal thickening), each a visible structure inside the lungs.

Every sampler takes (rng, anatomy) and returns a Finding without its class name; sizes are chosen so that each
finding stays at least ~3 voxels across after the whole volume is resized to 32x96x96 (about 3x2x2 mm voxels).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from reaf.synthetic.anatomy import Anatomy, draw_sides, lung_point
from reaf.synthetic.phantom import AIR, FLUID, SOFT, Capsule, Checker, Ellipsoid, Finding, Lattice, PosteriorLayer


def _zone(rng: np.random.Generator, weights: tuple[float, float, float]) -> str:
    return str(rng.choice(["upper", "middle", "lower"], p=np.asarray(weights) / sum(weights)))


def emphysema(rng: np.random.Generator, a: Anatomy) -> Finding:
    """Upper-zone destruction: a regional low-attenuation (-975 HU) area of 24-36 mm radii with clusters of air-density
    (-1000 HU) spheres, 8-14 mm radius, mostly in the upper zones (a token of the demo's input spans ~64 mm)."""
    side, sides = draw_sides(rng, 0.5)
    count = int(rng.integers(3, 7))
    shapes = []
    for s in sides:
        r = (rng.uniform(28, 36), rng.uniform(28, 36), rng.uniform(24, 32))
        shapes.append(Ellipsoid(-975.0, centre=lung_point(rng, a, s, "upper", 12.0), radii=r, within=f"lung_{s}"))
        for _ in range(count):
            r = rng.uniform(8, 14)
            p = lung_point(rng, a, s, "upper" if rng.random() < 0.7 else "middle", r * 0.6)
            shapes.append(Ellipsoid(-1000.0, centre=p, radii=(r, r, r), within=f"lung_{s}"))
    size = ["mild", "moderate", "marked"][min(count - 3, 2)]
    kind = ["centrilobular", "paraseptal"][int(rng.integers(2))]
    return Finding(side=side, size=size, lobe="upper", detail={"type": kind}, shapes=tuple(shapes))


def atelectasis(rng: np.random.Generator, a: Anatomy) -> Finding:
    """A dense (30 HU) flattened plate in the lower zone (radii 20-28 x 12-16 x 8-11 mm), surrounded by lung."""
    side, sides = draw_sides(rng, 0.3)
    shapes = []
    for s in sides:
        r = (rng.uniform(20, 28), rng.uniform(12, 16), rng.uniform(8, 11))
        p = lung_point(rng, a, s, "lower", 12.0)
        shapes.append(Ellipsoid(30.0, centre=p, radii=r, within=f"lung_{s}"))
    kind = ["subsegmental", "plate-like", "linear"][int(rng.integers(3))]
    return Finding(side=side, size="", lobe="lower", detail={"type": kind}, shapes=tuple(shapes))


def lung_nodule(rng: np.random.Generator, a: Anatomy) -> Finding:
    """Two to five round soft-tissue (30 HU) balls of 16-28 mm diameter (under the 30 mm of a mass) in one zone: at
    the demo's ~9x4x4 mm voxels a single smaller nodule changes no 8x16x16-voxel token by more than a few HU on
    average."""
    count = int(rng.integers(2, 6))
    sides = [["r", "l"][int(rng.integers(2))] for _ in range(count)]
    zone = _zone(rng, (0.45, 0.3, 0.25))
    radii = rng.uniform(8, 14, count)
    shapes = []
    for s, r in zip(sides, radii):
        p = lung_point(rng, a, s, zone, r + 2)
        shapes.append(Ellipsoid(30.0, centre=p, radii=(r, r, r), within=f"lung_{s}"))
    side = "bilateral" if len(set(sides)) == 2 else {"r": "right", "l": "left"}[sides[0]]
    return Finding(side=side, size="", lobe=zone, detail={"mm": round(2 * float(radii.max())), "count": count},
                   shapes=tuple(shapes))  # fmt: skip


def lung_opacity(rng: np.random.Generator, a: Anatomy) -> Finding:
    """Ground-glass (-480 HU) ellipsoidal patches of 16-26 mm radius."""
    side, sides = draw_sides(rng, 0.35)
    zone = _zone(rng, (0.4, 0.4, 0.2))
    shapes = []
    for s in sides:
        for _ in range(int(rng.integers(1, 3))):
            r = (rng.uniform(18, 26), rng.uniform(18, 26), rng.uniform(16, 22))
            p = lung_point(rng, a, s, zone, 10.0)
            shapes.append(Ellipsoid(-480.0, centre=p, radii=r, within=f"lung_{s}"))
    return Finding(side=side, size="", lobe=zone, shapes=tuple(shapes))


def fibrotic_sequela(rng: np.random.Generator, a: Anatomy) -> Finding:
    """Reticular dense streaks: 9-14 soft-tissue (20 HU) rods of 6-9 mm diameter, 30-50 mm long, in one cluster."""
    side, sides = draw_sides(rng, 0.3)
    zone = _zone(rng, (0.6, 0.3, 0.1))
    shapes = []
    for s in sides:
        centre = np.array(lung_point(rng, a, s, zone, 10.0))
        for _ in range(int(rng.integers(9, 15))):
            d = rng.normal(size=3) * np.array([1.0, 1.0, 0.4])
            d *= rng.uniform(15, 25) / np.linalg.norm(d)
            mid = centre + rng.uniform(-14, 14, 3)
            shapes.append(Capsule(20.0, p0=tuple(mid - d), p1=tuple(mid + d), radius=rng.uniform(3.0, 4.5),
                                  within=f"lung_{s}"))  # fmt: skip
    return Finding(side=side, size="", lobe=zone, shapes=tuple(shapes))


def pleural_effusion(rng: np.random.Generator, a: Anatomy) -> Finding:
    """A dependent fluid (10 HU) layer 12-28 mm deep along the posterior wall, tapering upwards."""
    side, sides = draw_sides(rng, 0.35)
    depth = rng.uniform(12, 28)
    cx, cy = a.cavity
    layer = PosteriorLayer(FLUID, cx=cx, cy=a.cavity_cy, ry=cy, depth=depth, z_top=a.base_z + rng.uniform(45, 70))
    shapes = tuple(dataclasses.replace(layer, within=f"lung_{s}") for s in sides)
    size = "small" if depth < 17 else "moderate" if depth < 23 else "large"
    return Finding(side=side, size=size, lobe=None, detail={"mm": round(depth)}, shapes=shapes)


def mosaic_attenuation(rng: np.random.Generator, a: Anatomy) -> Finding:
    """A 3-D checkerboard of 14-18 mm lobules alternating -620 / -950 HU over a lung region ~60 mm across."""
    side, sides = draw_sides(rng, 0.5)
    zone = _zone(rng, (0.3, 0.4, 0.3))
    cell = rng.uniform(14, 18)
    shapes = []
    for s in sides:
        c = np.array(lung_point(rng, a, s, zone, 10.0))
        half = np.array([30.0, 34.0, 28.0])
        shapes.append(Checker(-620.0, lo=tuple(c - half), hi=tuple(c + half), cell=cell, hu2=-950.0,
                              within=f"lung_{s}"))  # fmt: skip
    return Finding(side=side, size="", lobe=zone, shapes=tuple(shapes))


def _tubes(rng, a, s, start, count, length, outer, inner, zone) -> list:
    """Airways with walls: ``count`` tubes from near ``start`` towards random points of a lung zone."""
    shapes = []
    for _ in range(count):
        end = np.array(lung_point(rng, a, s, zone, outer))
        p0 = np.asarray(start) + rng.uniform(-4, 4, 3)
        d = end - p0
        p0 = end - d * min(1.0, length / max(np.linalg.norm(d), 1e-3))
        shapes.append(Capsule(SOFT, p0=tuple(p0), p1=tuple(end), radius=outer, within=f"lung_{s}"))
        shapes.append(Capsule(AIR, p0=tuple(p0), p1=tuple(end), radius=inner, within=f"lung_{s}"))
    return shapes


def peribronchial_thickening(rng: np.random.Generator, a: Anatomy) -> Finding:
    """Airways with thick walls (outer radius 6 mm, lumen 2 mm), 4-6 per lung, radiating 55 mm from the hilum."""
    side, sides = draw_sides(rng, 0.5)
    shapes = []
    for s in sides:
        hilum = (a.lung_centre_x(s) * 0.6, a.trachea[1], a.carina_z - 18.0)
        shapes += _tubes(rng, a, s, hilum, int(rng.integers(4, 7)), 55.0, 6.0, 2.0, _zone(rng, (0.2, 0.4, 0.4)))
    return Finding(side=side, size="", lobe=None, shapes=tuple(shapes))


def consolidation(rng: np.random.Generator, a: Anatomy) -> Finding:
    """A large dense (35 HU) lobar area, 14-26 mm radii, with air bronchograms."""
    side, sides = draw_sides(rng, 0.2)
    zone = _zone(rng, (0.4, 0.35, 0.25))
    shapes = []
    for s in sides:
        r = (rng.uniform(18, 26), rng.uniform(18, 26), rng.uniform(14, 20))
        c = lung_point(rng, a, s, zone, 10.0)
        shapes.append(Ellipsoid(35.0, centre=c, radii=r, within=f"lung_{s}"))
        for _ in range(2):
            d = rng.normal(size=3) * np.array([r[0], r[1], r[2]]) * 0.35
            shapes.append(Capsule(-950.0, p0=tuple(np.add(c, -d)), p1=tuple(np.add(c, d)), radius=1.8,
                                  within=f"lung_{s}"))  # fmt: skip
    return Finding(side=side, size="", lobe=zone, shapes=tuple(shapes))


def bronchiectasis(rng: np.random.Generator, a: Anatomy) -> Finding:
    """Dilated air tubes (lumen radius 6.5 mm, wall to 9 mm), 3-5 per lung, 45 mm long, in the lower zones."""
    side, sides = draw_sides(rng, 0.4)
    shapes = []
    for s in sides:
        hilum = (a.lung_centre_x(s) * 0.7, a.trachea[1] - 4.0, a.carina_z - 22.0)
        shapes += _tubes(rng, a, s, hilum, int(rng.integers(3, 6)), 45.0, 9.0, 6.5, "lower")
    kind = ["cylindrical", "varicose", "cystic"][int(rng.integers(3))]
    return Finding(side=side, size="", lobe="lower", detail={"type": kind}, shapes=tuple(shapes))


def septal_thickening(rng: np.random.Generator, a: Anatomy) -> Finding:
    """A fine grid of 2.6-3.2 mm lines every 8-10 mm (-60 HU) over a peripheral lung region."""
    side, sides = draw_sides(rng, 0.5)
    zone = _zone(rng, (0.2, 0.4, 0.4))
    period, thick = rng.uniform(8, 10), rng.uniform(2.6, 3.2)
    shapes = []
    for s in sides:
        c = np.array(lung_point(rng, a, s, zone, 10.0))
        half = np.array([18.0, 20.0, 16.0])
        shapes.append(Lattice(-60.0, lo=tuple(c - half), hi=tuple(c + half), period=period, thickness=thick,
                              within=f"lung_{s}"))  # fmt: skip
    return Finding(side=side, size="", lobe=zone, shapes=tuple(shapes))
