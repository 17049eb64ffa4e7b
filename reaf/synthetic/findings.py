"""The 18 CT-RATE findings as visible phantom structures: each class draws its own place, size and laterality."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

import numpy as np

from reaf.data.csv_tables import CLASSES
from reaf.synthetic import lung
from reaf.synthetic.anatomy import Anatomy, with_heart_scale
from reaf.synthetic.phantom import AIR, FLUID, SOFT, Box, Capsule, Ellipsoid, Finding, Ring, Shape

# Per-scan probability of each class (independent draws), kept within 0.24-0.33 so every class has positives.
PREVALENCE = dict(zip(CLASSES, (0.25, 0.33, 0.27, 0.24, 0.3, 0.24, 0.28, 0.3, 0.28, 0.33, 0.32, 0.3, 0.27,
                                0.25, 0.26, 0.28, 0.25, 0.25)))  # fmt: skip
# Painting order: large regional patterns first, focal findings last so that every planted class stays visible.
PAINT_ORDER = [15, 13, 7, 10, 17, 11, 14, 16, 8, 12, 9, 0, 1, 3, 4, 5, 6, 2]
METAL = 3071.0


def stream(seed: int, key: str, index: int) -> np.random.Generator:
    """An independent RNG for (seed, key, index); the key is hashed stably (not Python's salted hash)."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest, index])


def _medical_material(rng, a):
    kind = ["pacemaker", "sternotomy wires", "port catheter"][rng.integers(3)]
    bx, by = a.body
    if kind == "sternotomy wires":
        zs = np.linspace(-20, 30, rng.integers(3, 5))
        ys = (a.front - 2.5, a.front + a.muscle + 2.0)  # in front of and behind the sternum, not on the bone
        shapes = [Capsule(METAL, p0=(-15.0, y, z), p1=(15.0, y, z), radius=3.0) for z in zs for y in ys]
        return Finding(detail={"kind": kind}, shapes=tuple(shapes))
    sign = -1.0 if kind == "pacemaker" else 1.0
    x = sign * rng.uniform(32, 46)
    ys = a.body_cy + by * np.sqrt(1 - (x / bx) ** 2) - a.fat
    z = rng.uniform(18, 32)
    box = Box(METAL, lo=(x - 18, ys - 7, z - 20), hi=(x + 18, ys + 2, z + 20))  # a generator can, ~36x40 mm
    target = a.heart_centre if kind == "pacemaker" else (21.0, a.cavity_cy + 6.0, 10.0)
    leads = [Capsule(METAL, p0=(x, ys - 2, z), p1=target, radius=3.0)]
    if kind == "pacemaker":  # dual chamber: a second lead to the right atrium
        (cx, cy, cz), (sx, _, sz) = a.heart_centre, a.heart_size
        atrium = (cx + 0.5 * sx, cy, cz + 0.5 * sz)
        leads.append(Capsule(METAL, p0=(x, ys - 2, z), p1=atrium, radius=3.0))
    return Finding(side="left" if sign < 0 else "right", detail={"kind": kind}, shapes=(box, *leads))


def _arterial_calcification(rng, a):
    (dx, dy, dr), (ux, uy, ur) = a.aorta
    count = int(rng.integers(3, 7))
    shapes = []
    for _ in range(count):
        x, y, r, z0 = (dx, dy, dr, rng.uniform(-30, 20)) if rng.random() < 0.7 else (ux, uy, ur, rng.uniform(15, 28))
        a0 = rng.uniform(0, 2 * np.pi)
        shapes.append(Ring(900.0, cx=x, cy=y, z0=z0, z1=z0 + rng.uniform(18, 30), r_in=r - 2.0, r_out=r + 2.5,
                           a0=a0, a1=a0 + rng.uniform(2.0, 3.5)))  # fmt: skip
    return Finding(size="mild" if count < 5 else "marked", shapes=tuple(shapes))


def _cardiomegaly(rng, a):
    scale = rng.uniform(1.25, 1.36)
    return Finding(size="mild" if scale < 1.32 else "marked", heart_scale=scale)


def _pericardial_effusion(rng, a):
    t = rng.uniform(6, 12)
    rim = Ellipsoid(FLUID, centre=a.heart_centre, radii=tuple(r + 3 + t for r in a.heart_size), stage="early")
    return Finding(size="small" if t < 9 else "moderate", detail={"mm": round(t)}, shapes=(rim,))


def _coronary_calcification(rng, a):
    # Calcified segments running along the heart surface (tram-track plaques, 32-50 mm long): single plaques of a
    # few mm vanish at the demo's ~9x4x4 mm voxels.
    names = ["left anterior descending", "circumflex", "right coronary"]
    count = int(rng.integers(3, 7))
    shapes = []
    for _ in range(count):
        d = np.array([rng.uniform(-1, 1), rng.uniform(0.2, 1), rng.uniform(-0.3, 0.8)])
        d /= np.linalg.norm(d)
        tangent = np.cross(d, rng.normal(size=3))
        tangent *= rng.uniform(16, 25) / np.linalg.norm(tangent)
        p = np.array([c + (r + 1.5) * q for c, r, q in zip(a.heart_centre, a.heart_size, d)])
        shapes.append(Capsule(900.0, p0=tuple(p - tangent), p1=tuple(p + tangent), radius=3.5))
    artery = names[int(rng.integers(3))]
    return Finding(size="a few" if count < 5 else "extensive", detail={"artery": artery}, shapes=tuple(shapes))


def _hiatal_hernia(rng, a):
    r = (rng.uniform(13, 18), rng.uniform(11, 14), rng.uniform(9, 12))
    c = (-2.0, a.trachea[1] - 2.0, max(a.base_z + 0.6 * a.dome, -34.0))
    level = c[1] - rng.uniform(0.0, 0.4) * r[1]
    shapes = (
        Ellipsoid(SOFT, centre=c, radii=tuple(q + 2.5 for q in r)),
        Ellipsoid(15.0, centre=c, radii=r),
        Ellipsoid(AIR, centre=c, radii=r, clip=((-1e4, level, -1e4), (1e4, 1e4, 1e4))),
    )
    return Finding(size="small" if r[0] < 15.5 else "large", shapes=shapes)


def _lymphadenopathy(rng, a):
    # Nodes sit at the mediastinal border so that they widen its contour against the lung (fat vs node is only
    # ~170 HU, faint in a 1500 HU window); hilar nodes lie in the lung root.
    ty, c, m = a.trachea[1], a.carina_z, a.mediastinum
    stations = {
        "right paratracheal": (m, ty + 2.0, c + 14.0), "prevascular": (-m, a.aorta[1][1] + 12.0, c + 20.0),
        "aortopulmonary window": (-m, ty + 8.0, c + 6.0), "subcarinal": (0.0, ty - 1.0, c - 13.0),
        "right hilar": (m + 10.0, ty - 1.0, c - 8.0), "left hilar": (-m - 10.0, ty - 1.0, c - 8.0),
    }  # fmt: skip
    chosen = [str(n) for n in sorted(rng.choice(list(stations), size=int(rng.integers(2, 4)), replace=False))]
    sizes = rng.uniform(8.0, 11.0, len(chosen))
    shapes = tuple(Ellipsoid(60.0, centre=stations[n], radii=(m + 4.0 if n == "subcarinal" else s, s, s * 0.9),
                             stage="early") for n, s in zip(chosen, sizes))  # fmt: skip
    return Finding(detail={"stations": chosen, "mm": round(2 * float(sizes.max()))}, shapes=shapes)


SAMPLERS: list[Callable[[np.random.Generator, Anatomy], Finding]] = [
    _medical_material, _arterial_calcification, _cardiomegaly, _pericardial_effusion, _coronary_calcification,
    _hiatal_hernia, _lymphadenopathy, lung.emphysema, lung.atelectasis, lung.lung_nodule, lung.lung_opacity,
    lung.fibrotic_sequela, lung.pleural_effusion, lung.mosaic_attenuation, lung.peribronchial_thickening,
    lung.consolidation, lung.bronchiectasis, lung.septal_thickening,
]  # fmt: skip


def sample_findings(seed: int, scan_id: str, anatomy: Anatomy, classes: set[str] | None = None):
    """Draw the findings of one scan: -> (anatomy with the heart scaled if cardiomegaly, findings in CLASSES order).

    Each class has its own RNG stream from (seed, scan_id, class index): its presence (Bernoulli with PREVALENCE,
    or membership in ``classes`` when given) and its parameters never depend on the other classes, so dropping one
    class from ``classes`` leaves every other finding identical.
    """
    unknown = set(classes or ()) - set(CLASSES)
    if unknown:
        raise ValueError(f"unknown finding classes {sorted(unknown)}; expected names from CLASSES")
    present: dict[int, np.random.Generator] = {}
    for k, name in enumerate(CLASSES):
        rng = stream(seed, scan_id, 100 + k)
        hit = rng.random() < PREVALENCE[name]
        if (name in classes) if classes is not None else hit:
            present[k] = rng
    findings: dict[int, Finding] = {}
    order = [2] + [k for k in range(len(CLASSES)) if k != 2]  # cardiomegaly first: it moves the heart surface
    for k in order:
        if k in present:
            findings[k] = dataclasses.replace(SAMPLERS[k](present[k], anatomy), cls=CLASSES[k])
            if k == 2:
                anatomy = with_heart_scale(anatomy, findings[k].heart_scale)
    return anatomy, [findings[k] for k in sorted(findings)]


def finding_shapes(findings: list[Finding]) -> list[Shape]:
    """All shapes of ``findings`` in PAINT_ORDER (regional patterns first, focal findings last)."""
    rank = {CLASSES[k]: i for i, k in enumerate(PAINT_ORDER)}
    return [s for f in sorted(findings, key=lambda f: rank[f.cls]) for s in f.shapes]
