"""Toy cardiac imaging for the multi-modality model: echo and angiogram videos, chest radiographs, and their reports.

These are not anatomy; they are images whose content follows the patient's state so that an image encoder has a
known answer to learn. Every sample is rendered from its own ``seed``, so a sample is the same whatever else is
rendered with it.

- **echo** (:data:`ECHO_SHAPE` = 48 frames of 64 x 64, uint8, :data:`FRAME_RATE` frames/s): an apical view in an
  ultrasound sector with temporally correlated speckle. Views (:data:`ECHO_VIEWS`): ``A4C`` (left ventricle on the
  right of the image, right ventricle on the left, both atria below) and ``A2C`` (left ventricle and atrium only;
  inferior wall on the left, anterior wall on the right). The cardiac cycle follows the heart rate of the patient's
  rhythm (1800 / HR frames per beat, irregular beat lengths in atrial fibrillation); the endocardium moves so that
  end-systolic / end-diastolic volume (area^1.5, the area-length model) = 1 - LVEF; walls in an infarct territory
  (LAD: septum and apex in A4C, anterior wall and apex in A2C; RCA: basal inferior septum in A4C, inferior wall in
  A2C) do not move, and the other walls move more so that the global LVEF holds; the ventricle dilates with low
  LVEF; wall thickness is the septal thickness (LVH) and thickens in systole (constant myocardial area); LBBB and
  ventricular pacing delay the lateral wall (dyssynchrony). A pacemaker lead is a bright line from the right
  atrium through the tricuspid valve to the right-ventricular apex, moving with it (A4C only).
- **angiogram** (:data:`ANGIOGRAM_SHAPE` = 40 frames of 64 x 64, uint8): an X-ray cine run after a contrast
  injection into the left (``LCA`` views: left main, LAD with diagonals, LCx with obtuse marginals) or right
  (``RCA`` view: RCA with conus, acute marginal and posterior descending branches) coronary artery. Contrast
  fills each vessel from the ostium at a finite speed (darkening by the chord length of the lumen), then washes
  out; the heart moves the tree with the heart rate. A stenosis narrows the lumen at its position along the
  artery; a severe one (>= 70 %) slows the filling beyond it; a total occlusion (>= :data:`OCCLUSION_THRESHOLD`)
  leaves the artery beyond it and all its distal branches unfilled. The guiding catheter and, with a pacemaker,
  the lead wire are visible.
- **chest X-ray** (:data:`CHEST_XRAY_SHAPE` = 256 x 256, uint8): frontal radiograph with lungs, ribs, clavicles,
  spine, mediastinum and a cardiac silhouette whose width is the cardiothoracic ratio; pulmonary edema (perihilar
  haze and Kerley B lines), consolidation (a dense patch confined to one lobe, :data:`LUNG_LOBES`), pleural
  effusions (blunted costophrenic angles), and a pacemaker (bright generator in the left upper chest with a lead
  to the right-ventricular apex).

The report writers (:func:`echo_report`, :func:`angiogram_report`, :func:`chest_xray_report`) state what the
image shows, in varied clinical phrasing that includes the wording of the CLERC zero-shot prompts ("The left
ventricular ejection fraction is estimated to be N%", "LAD had an occlusion", "There is consolidation in the
lung", "pacemaker/ICD device in place", ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

FRAME_RATE: int = 30
"""Frames per second of the echo and angiogram videos."""
ECHO_SHAPE: tuple[int, int, int] = (48, 64, 64)
ANGIOGRAM_SHAPE: tuple[int, int, int] = (40, 64, 64)
CHEST_XRAY_SHAPE: tuple[int, int] = (256, 256)
ECHO_VIEWS: tuple[str, ...] = ("A4C", "A2C")
ANGIOGRAM_VIEWS: tuple[str, ...] = ("LCA RAO caudal", "RCA LAO", "LCA LAO cranial", "LCA RAO cranial")
CHEST_XRAY_VIEWS: tuple[str, ...] = ("PA", "AP")
CORONARY_ARTERIES: tuple[str, ...] = ("LAD", "LCx", "RCA")
OCCLUSION_THRESHOLD: float = 0.99
"""Lumen narrowing from which an artery counts as occluded (the ``*_occlusion`` labels: total occlusion)."""
SIGNIFICANT_STENOSIS: float = 0.7
LUNG_LOBES: tuple[str, ...] = (
    "right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe"
)
_ARTERY_NAMES = {
    "LAD": "left anterior descending artery",
    "LCx": "left circumflex artery",
    "RCA": "right coronary artery",
}


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [-1, 1] image coordinates (y down, x right)."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    return yy, xx


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


# ------------------------------------------------------------------------------------------------------- echo


def _beat_times(
    num_frames: int, heart_rate: float, irregular: bool, rng: np.random.Generator, fps: float = FRAME_RATE
) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: the time since the onset of the current beat (s) and that beat's cycle length (s)."""
    t = np.arange(num_frames) / fps
    rr0 = 60.0 / max(float(heart_rate), 20.0)
    n_beats = int(np.ceil(t[-1] / 0.3)) + 3
    z = rng.normal(size=n_beats)
    spread = rng.uniform(0.15, 0.3)
    if irregular:
        rr = np.maximum(rr0 * np.exp(spread * z - 0.5 * spread**2), 0.3)
    else:
        rr = rr0 * (1.0 + 0.015 * z)
    onsets = -rng.uniform(0, rr[0]) + np.concatenate([[0.0], np.cumsum(rr[:-1])])
    k = np.searchsorted(onsets, t, side="right") - 1
    return t - onsets[k], rr[k]


def _contraction(tau: np.ndarray, rr: np.ndarray) -> np.ndarray:
    """Ventricular contraction (0 end-diastole, 1 end-systole) at ``tau`` s into a beat of length ``rr`` s: one
    sin^2 hump over systole and early relaxation, whose length grows with the cycle length."""
    width = np.minimum(0.1 + 0.42 * np.sqrt(rr), 0.9 * rr)
    inside = (tau >= 0) & (tau < width)
    return np.where(inside, np.sin(np.pi * np.clip(tau, 0, None) / width) ** 2, 0.0)


def _ellipse_radius(theta: np.ndarray, a: float, b: float) -> np.ndarray:
    """Radius at polar angle ``theta`` of an ellipse with vertical semi-axis ``a`` and horizontal ``b``."""
    return a * b / np.sqrt((a * np.cos(theta)) ** 2 + (b * np.sin(theta)) ** 2)


def _territory_weights(theta: np.ndarray, view: str, anterior: bool, inferior: bool) -> tuple[np.ndarray, np.ndarray]:
    """Akinetic weight (1 = does not move) and late-activation weight (the lateral wall) at polar angle ``theta``
    around the left-ventricular centre (image coordinates, y down: sin < 0 points to the apex)."""
    c, s = np.cos(theta), np.sin(theta)
    left = _sigmoid((-c - 0.35) / 0.06)
    right = _sigmoid((c - 0.35) / 0.06)
    apex = _sigmoid((-s - 0.8) / 0.05)
    akinetic = np.zeros_like(theta)
    if view == "A4C":  # left wall = septum, right wall = lateral
        if anterior:
            akinetic = np.maximum(akinetic, np.maximum(left * _sigmoid((0.3 - s) / 0.06), apex))
        if inferior:
            akinetic = np.maximum(akinetic, left * _sigmoid((s - 0.05) / 0.06))
    else:  # A2C: left wall = inferior, right wall = anterior
        if anterior:
            akinetic = np.maximum(akinetic, np.maximum(right, apex))
        if inferior:
            akinetic = np.maximum(akinetic, left * (1 - apex))
    return akinetic, right


def _displacement_scale(akinetic: np.ndarray, r_ed: np.ndarray, lvef: float) -> float:
    """The inward displacement (fraction of the radius) of the moving walls at end-systole so that the volume
    change of the cavity (area^1.5) is ``lvef`` with the akinetic walls still."""
    moving = 1.0 - akinetic
    w = r_ed**2 / np.sum(r_ed**2)
    q = (1.0 - lvef) ** (2.0 / 3.0)  # end-systolic / end-diastolic area
    a, b = np.sum(w * moving**2), np.sum(w * moving)
    disc = b * b - a * (1.0 - q)
    d = b / a if disc < 0 else (b - np.sqrt(disc)) / a
    return float(np.clip(d, 0.0, 0.75))


def _speckle(shape: tuple[int, int, int], rng: np.random.Generator, rho: float = 0.85) -> np.ndarray:
    """Multiplicative speckle (mean 1): the magnitude of a spatially smoothed complex Gaussian field that
    decorrelates slowly from frame to frame."""
    f, h, w = shape
    z = rng.standard_normal((2, f, h, w)).astype(np.float32)
    for t in range(1, f):
        z[:, t] = rho * z[:, t - 1] + np.sqrt(1 - rho**2) * z[:, t]
    z = gaussian_filter(z, (0, 0, 0.8, 0.8))
    mag = np.sqrt(z[0] ** 2 + z[1] ** 2)
    mag /= mag.mean()
    return 1.0 + 0.7 * (mag - 1.0)


def _polyline_distance(yy: np.ndarray, xx: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance of every pixel to a densely sampled polyline ``points`` (P, 2) as (x, y)."""
    d = np.hypot(xx[..., None] - points[:, 0], yy[..., None] - points[:, 1])
    return d.min(-1)


def _near_polyline(yy: np.ndarray, xx: np.ndarray, points: np.ndarray, width: float) -> np.ndarray:
    """Pixels of a regular grid (``yy`` varies along rows, ``xx`` along columns) closer than ``width`` to the
    polyline ``points`` (P, 2) as (x, y); distances are computed only in the polyline's bounding box."""
    out = np.zeros(yy.shape, bool)
    rows = np.flatnonzero((yy[:, 0] > points[:, 1].min() - width) & (yy[:, 0] < points[:, 1].max() + width))
    cols = np.flatnonzero((xx[0] > points[:, 0].min() - width) & (xx[0] < points[:, 0].max() + width))
    if len(rows) and len(cols):
        box = np.ix_(rows, cols)
        out[box] = _polyline_distance(yy[box], xx[box], points) < width
    return out


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int) -> np.ndarray:
    u = np.linspace(0, 1, n)[:, None]
    return (1 - u) ** 2 * p0 + 2 * (1 - u) * u * p1 + u**2 * p2


def render_echo_clip(
    lvef: float,
    ivs_thickness: float,
    heart_rate: float,
    seed: int,
    view: str = "A4C",
    anterior_akinesis: bool = False,
    inferior_akinesis: bool = False,
    pacemaker: bool = False,
    irregular: bool = False,
    dyssynchrony: bool = False,
    female: bool = False,
    shape: tuple[int, int, int] = ECHO_SHAPE,
) -> np.ndarray:
    """One echo clip (frames, H, W) uint8 at :data:`FRAME_RATE` frames/s.

    ``lvef`` in %, ``ivs_thickness`` in mm, ``heart_rate`` in bpm (``irregular``: beat lengths of atrial
    fibrillation), ``view`` one of :data:`ECHO_VIEWS`; infarct territories, a pacemaker lead (A4C), lateral-wall
    delay (``dyssynchrony``) and a smaller heart (``female``) as in the module docstring.
    """
    if view not in ECHO_VIEWS:
        raise ValueError(f"unknown echo view {view!r}; known: {list(ECHO_VIEWS)}")
    rng = np.random.default_rng(seed)
    frames, h, w = shape
    ef = float(np.clip(lvef, 5.0, 85.0)) / 100.0
    yy, xx = _grid(h, w)
    shift = rng.normal(0, 0.025, 2)
    yy, xx = yy - shift[0], xx - shift[1]
    tau, rr = _beat_times(frames, heart_rate, irregular, rng)
    contraction = _contraction(tau, rr)
    delay = rng.uniform(0.06, 0.1) * dyssynchrony
    late = _contraction(tau - delay, rr)[:, None, None]
    early = contraction[:, None, None]

    size = (0.93 if female else 1.0) * (1 + 0.009 * max(0.0, 55.0 - 100 * ef)) * rng.normal(1.0, 0.03)
    a_lv, b_lv = 0.46 * size, 0.21 * size
    wall = float(np.clip(ivs_thickness, 4.0, 25.0)) / 100.0
    cx = 0.16 if view == "A4C" else 0.0
    cy = -0.74 + a_lv
    base_y = cy + a_lv

    img = np.full((frames, h, w), 45.0)
    # atria (below the ventricles; they fill while the ventricles contract)
    atria = [(cx, base_y + 0.2, 0.16 * (1.25 if irregular else 1.0))]
    if view == "A4C":
        b_rv, a_rv = 0.13 * size, 0.37 * size
        rv_cx = cx - b_lv - wall - b_rv - 0.01
        rv_cy = cy - a_lv + 0.1 + a_rv
        atria.append((rv_cx, rv_cy + a_rv + 0.17, 0.14))
    for ax, ay, ar in atria:
        rho = np.hypot(xx - ax, yy - ay)[None]
        radius = ar * (1 + 0.12 * early)
        img = np.where(rho < radius + 0.02, 110.0, img)
        img = np.where(rho < radius, 10.0, img)
    if view == "A4C":
        rho_rv = np.hypot(xx - rv_cx, yy - rv_cy)[None]
        th_rv = np.arctan2(yy - rv_cy, xx - rv_cx)[None]
        r_rv = _ellipse_radius(th_rv, a_rv, b_rv)
        endo_rv = r_rv * (1 - 0.14 * early)
        epi_rv = np.sqrt(endo_rv**2 + (r_rv + 0.035) ** 2 - r_rv**2)
        img = np.where(rho_rv < epi_rv, 150.0, img)

    # left ventricle: polar geometry around its centre
    theta = np.arctan2(yy - cy, xx - cx)
    rho = np.hypot(xx - cx, yy - cy)
    akinetic, lateral = _territory_weights(theta, view, anterior_akinesis, inferior_akinesis)
    r_ed = _ellipse_radius(theta, a_lv, b_lv)
    grid_theta = np.linspace(-np.pi, np.pi, 360, endpoint=False)
    d0 = _displacement_scale(
        _territory_weights(grid_theta, view, anterior_akinesis, inferior_akinesis)[0],
        _ellipse_radius(grid_theta, a_lv, b_lv), ef,
    )
    c_local = (1 - lateral) * early + lateral * late
    endo = r_ed * (1 - d0 * (1 - akinetic) * c_local)
    epi = np.sqrt(endo**2 + (r_ed + wall) ** 2 - r_ed**2)
    img = np.where(rho < epi + 0.025, 195.0, img)  # pericardium
    img = np.where(rho < epi, 150.0, img)
    if view == "A4C":
        img = np.where(rho_rv < endo_rv, 10.0, img)
    img = np.where(rho < endo, 10.0, img)
    img = img * _speckle((frames, h, w), rng)

    if pacemaker and view == "A4C":
        tip = np.stack([np.full(frames, rv_cx + 0.01), rv_cy - a_rv * (1 - 0.14 * contraction) + 0.05], -1)
        valve = np.array([rv_cx + 0.03, rv_cy + a_rv + 0.03])
        bend = np.array([rv_cx - 0.03, rv_cy + 0.05])
        ra = np.array(atria[1][:2])
        for f in range(frames):
            path = np.concatenate([_bezier(tip[f], bend, valve, 24), _bezier(valve, valve, ra, 8)])
            img[f] = np.where(_near_polyline(yy, xx, path, 0.028), 245.0, img[f])

    gain = rng.uniform(0.85, 1.15)
    fan_r = np.hypot(xx, yy + 1.02)
    fan = (np.abs(np.arctan2(xx, yy + 1.02)) < 0.78) & (fan_r < 1.95)
    img = img * gain * (1.0 - 0.15 * fan_r)
    img = np.where(fan[None], img, 0.0)
    return np.clip(img, 0, 255).astype(np.uint8)


def render_echo(
    lvef: np.ndarray,
    ivs_thickness: np.ndarray,
    rng: np.random.Generator,
    anterior_akinesis: np.ndarray | None = None,
    inferior_akinesis: np.ndarray | None = None,
    shape: tuple[int, int, int] = ECHO_SHAPE,
    heart_rate: np.ndarray | None = None,
    pacemaker: np.ndarray | None = None,
    view: str = "A4C",
) -> np.ndarray:
    """Echo clips (N, frames, H, W) uint8 for LVEF (%) and septal thickness (mm) per study (one seed per clip
    drawn from ``rng``; heart rate 70 bpm unless given); see :func:`render_echo_clip`."""
    n = len(lvef)
    seeds = rng.integers(0, 2**63 - 1, n)
    ant = np.zeros(n, bool) if anterior_akinesis is None else np.asarray(anterior_akinesis, bool)
    inf = np.zeros(n, bool) if inferior_akinesis is None else np.asarray(inferior_akinesis, bool)
    hr = np.full(n, 70.0) if heart_rate is None else np.asarray(heart_rate, float)
    pace = np.zeros(n, bool) if pacemaker is None else np.asarray(pacemaker, bool)
    out = np.zeros((n, *shape), np.uint8)
    for i in range(n):
        out[i] = render_echo_clip(float(lvef[i]), float(ivs_thickness[i]), float(hr[i]), int(seeds[i]), view=view,
                                  anterior_akinesis=bool(ant[i]), inferior_akinesis=bool(inf[i]),
                                  pacemaker=bool(pace[i]), shape=shape)
    return out


# -------------------------------------------------------------------------------------------------- angiogram

# Canonical trees, (x, y) control points: (name, artery, parent, position on the parent, controls). Branch
# controls are offsets from the branching point.
_LEFT_TREE = (
    ("LM", "LM", None, 0.0, ((0.0, -0.55), (0.06, -0.5), (0.12, -0.45))),
    ("LAD", "LAD", "LM", 1.0, ((0.0, 0.0), (-0.05, 0.55), (-0.2, 1.2))),
    ("D1", "LAD", "LAD", 0.25, ((0.0, 0.0), (-0.2, 0.12), (-0.35, 0.4))),
    ("D2", "LAD", "LAD", 0.5, ((0.0, 0.0), (-0.15, 0.1), (-0.28, 0.32))),
    ("LCx", "LCx", "LM", 1.0, ((0.0, 0.0), (0.4, 0.05), (0.45, 0.75))),
    ("OM1", "LCx", "LCx", 0.4, ((0.0, 0.0), (0.05, 0.2), (-0.05, 0.45))),
    ("OM2", "LCx", "LCx", 0.7, ((0.0, 0.0), (0.02, 0.18), (-0.06, 0.35))),
)
_RIGHT_TREE = (
    ("RCA", "RCA", None, 0.0, ((0.05, -0.55), (-0.75, -0.45), (-0.45, 0.55))),
    ("conus", "RCA", "RCA", 0.06, ((0.0, 0.0), (-0.05, -0.15), (-0.15, -0.25))),
    ("AM", "RCA", "RCA", 0.55, ((0.0, 0.0), (0.15, 0.05), (0.3, 0.15))),
    ("RCA distal", "RCA", "RCA", 1.0, ((0.0, 0.0), (0.25, 0.05), (0.4, 0.02))),
    ("PDA", "RCA", "RCA distal", 0.6, ((0.0, 0.0), (0.1, 0.15), (0.3, 0.3))),
)
_ROOT_RADIUS = {"LM": (0.055, 0.05), "LAD": (0.045, 0.018), "LCx": (0.042, 0.02), "RCA": (0.05, 0.03)}
_VIEW_POSE = {  # rotation (deg), horizontal scale, vertical scale of the canonical tree
    "LCA RAO caudal": (0.0, 1.0, 1.0),
    "LCA LAO cranial": (30.0, 0.85, 1.05),
    "LCA RAO cranial": (-20.0, 1.0, 0.85),
    "RCA LAO": (0.0, 1.0, 1.0),
}
_POINTS = 40


def _segments(view: str, rng: np.random.Generator) -> list[dict]:
    """The vessel segments of one run: each with points (P, 2) as (x, y), radii (P,), arc length from the
    ostium (P,), its artery, and whether it is that artery's main trunk."""
    tree = _RIGHT_TREE if view.startswith("RCA") else _LEFT_TREE
    rot, sx, sy = _VIEW_POSE[view]
    angle = np.radians(rot + rng.normal(0, 6))
    scale = rng.uniform(0.9, 1.1)
    shift = rng.normal(0, 0.05, 2)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    out: dict[str, dict] = {}
    for name, artery, parent, at, controls in tree:
        ctrl = np.array(controls, float) + rng.normal(0, 0.035, (3, 2)) * np.array([[0.0], [1.0], [1.0]])
        if parent is None:
            start, s0, r0 = ctrl[0], 0.0, _ROOT_RADIUS[name]
            r_start, r_end = r0
        else:
            p = out[parent]
            k = min(int(round(at * (_POINTS - 1))), _POINTS - 1)
            start, s0 = p["canonical"][k], p["arc"][k]
            ctrl = ctrl + start
            if name in _ROOT_RADIUS:
                r_start, r_end = _ROOT_RADIUS[name]
            else:
                r_start, r_end = 0.65 * p["radius"][k], 0.012
        pts = _bezier(ctrl[0], ctrl[1], ctrl[2], _POINTS)
        arc = s0 + np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
        out[name] = {
            "name": name, "artery": artery, "parent": parent, "at": at, "canonical": pts, "arc": arc,
            "radius": np.linspace(r_start, r_end, _POINTS), "trunk": name == artery or name == "RCA distal",
        }
    for seg in out.values():
        pts = seg["canonical"] * np.array([sx, sy])
        seg["points"] = (pts @ rotation.T) * scale + shift
        seg["radius"] = seg["radius"] * scale
        seg["arc"] = seg["arc"] * scale
    return list(out.values())


def _trunk_position(segments: list[dict], artery: str, u: float) -> tuple[str, int]:
    """The segment and point index at fraction ``u`` along an artery's trunk (the RCA trunk continues into its
    distal segment)."""
    trunk = [s for s in segments if s["artery"] == artery and s["trunk"]]
    k = min(int(round(u * (len(trunk) * _POINTS - 1))), len(trunk) * _POINTS - 1)
    return trunk[k // _POINTS]["name"], k % _POINTS


def _downstream(segments: list[dict], name: str, index: int) -> dict[str, np.ndarray]:
    """Per segment, the points beyond point ``index`` of segment ``name`` (its distal part and every branch that
    leaves it further on, with their own branches)."""
    by_name = {s["name"]: s for s in segments}
    beyond = {s["name"]: np.zeros(_POINTS, bool) for s in segments}
    beyond[name][index:] = True
    changed = True
    while changed:
        changed = False
        for s in segments:
            if s["parent"] is None or beyond[s["name"]].all():
                continue
            k = min(int(round(s["at"] * (_POINTS - 1))), _POINTS - 1)
            if beyond[s["parent"]][k] and s["name"] in by_name:
                beyond[s["name"]][:] = True
                changed = True
    return beyond


def render_angiogram_run(
    stenosis: Sequence[float],
    seed: int,
    view: str = "LCA RAO caudal",
    lesion_position: Sequence[float] | None = None,
    pacemaker: bool = False,
    heart_rate: float = 70.0,
    shape: tuple[int, int, int] = ANGIOGRAM_SHAPE,
    return_paths: bool = False,
) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """One angiographic run (frames, H, W) uint8 at :data:`FRAME_RATE` frames/s.

    ``stenosis`` (3,): lumen narrowing (0-1) of LAD, LCx and RCA (:data:`CORONARY_ARTERIES`) at
    ``lesion_position`` (3,) along each trunk (0 ostium - 1 distal; default 0.3); ``view`` one of
    :data:`ANGIOGRAM_VIEWS` (``LCA`` views show LAD and LCx, the ``RCA`` view the RCA). With ``return_paths``, also
    ``{artery: (P, 2) (row, col) pixel positions of its trunk at rest, artery + " lesion": index of the lesion on
    that path}`` for the arteries in view.
    """
    if view not in ANGIOGRAM_VIEWS:
        raise ValueError(f"unknown angiogram view {view!r}; known: {list(ANGIOGRAM_VIEWS)}")
    rng = np.random.default_rng(seed)
    frames, h, w = shape
    sten = np.clip(np.asarray(stenosis, float), 0, 1)
    pos = np.full(3, 0.3) if lesion_position is None else np.clip(np.asarray(lesion_position, float), 0.05, 0.95)
    segments = _segments(view, rng)
    fps = float(FRAME_RATE)
    t = np.arange(frames) / fps
    t_inject = rng.uniform(0.1, 0.25)
    speed = rng.uniform(1.8, 2.6)  # contrast front, image units per second
    t_wash = t_inject + rng.uniform(0.75, 0.95)
    wash = np.where(t < t_wash, 1.0, np.exp(-(t - t_wash) / 0.35))

    fill_time = {s["name"]: t_inject + s["arc"] / speed for s in segments}
    lumen = {s["name"]: s["radius"].copy() for s in segments}
    blocked = {s["name"]: np.zeros(_POINTS, bool) for s in segments}
    paths: dict[str, np.ndarray] = {}
    for j, artery in enumerate(CORONARY_ARTERIES):
        trunk = [s for s in segments if s["artery"] == artery and s["trunk"]]
        if not trunk:
            continue
        name, k = _trunk_position(segments, artery, pos[j])
        lesion = next(s for s in segments if s["name"] == name)
        if sten[j] > 0:
            u = np.arange(_POINTS)
            lumen[name] *= 1 - sten[j] * np.exp(-(((u - k) / 1.6) ** 2))
        beyond = _downstream(segments, name, k)
        if sten[j] >= OCCLUSION_THRESHOLD:
            for s in segments:
                blocked[s["name"]] |= beyond[s["name"]]
            blocked[name][k:] = True
        elif sten[j] >= SIGNIFICANT_STENOSIS:  # slower flow beyond a severe stenosis
            slow = 1 - 0.75 * (sten[j] - SIGNIFICANT_STENOSIS) / (1 - SIGNIFICANT_STENOSIS)
            s_lesion = lesion["arc"][k]
            for s in segments:
                extra = (s["arc"] - s_lesion) * (1 / slow - 1) / speed
                fill_time[s["name"]] = np.where(beyond[s["name"]], fill_time[s["name"]] + extra, fill_time[s["name"]])
        trunk_points = np.concatenate([s["points"] for s in trunk])
        paths[artery] = np.stack([(trunk_points[:, 1] + 1) / 2 * (h - 1), (trunk_points[:, 0] + 1) / 2 * (w - 1)], -1)
        paths[artery + " lesion"] = np.array([trunk.index(lesion) * _POINTS + k])

    # lumen chord per (pixel, vessel point) pair within reach, then contrast over time
    yy, xx = _grid(h, w)
    pix = np.stack([xx.ravel(), yy.ravel()], -1)
    pair_pixel, pair_chord, pair_time = [], [], []
    for s in segments:
        r = np.where(blocked[s["name"]], 0.0, lumen[s["name"]])
        d = np.hypot(pix[:, None, 0] - s["points"][None, :, 0], pix[:, None, 1] - s["points"][None, :, 1])
        p_idx, q_idx = np.nonzero(d < r[None, :])
        pair_pixel.append(p_idx)
        pair_chord.append(2 * np.sqrt(np.maximum(r[q_idx] ** 2 - d[p_idx, q_idx] ** 2, 0)))
        pair_time.append(fill_time[s["name"]][q_idx])
    p_idx, chord, t_fill = (np.concatenate(v) for v in (pair_pixel, pair_chord, pair_time))
    filled = np.clip((t[:, None] - t_fill[None, :]) / 0.08, 0, 1) * wash[:, None]
    opacity = np.zeros((frames, h * w))
    f_idx = np.repeat(np.arange(frames), len(p_idx))
    np.maximum.at(opacity, (f_idx, np.tile(p_idx, frames)), (filled * chord[None, :]).ravel())
    opacity = opacity.reshape(frames, h, w)

    # guiding catheter (contrast-filled during the injection) and a pacemaker lead wire
    ostium = segments[0]["points"][0]
    catheter = _bezier(np.array([0.15, 1.05]), np.array([0.45, -0.2]), ostium, 160)
    injecting = np.clip((t - t_inject + 0.05) / 0.05, 0, 1) * np.where(t < t_wash - 0.2, 1.0, 0.3)
    cath = np.clip(0.03 - _polyline_distance(yy, xx, catheter), 0, None) * 3.0
    opacity += cath[None] * (0.35 + 0.65 * injecting[:, None, None])
    if pacemaker:
        lead = _bezier(np.array([0.95, -1.05]), np.array([-0.6, -0.3]), np.array([-0.25, 0.75]), 240)
        opacity += 0.12 * _near_polyline(yy, xx, lead, 0.02)[None]

    # cardiac motion: the tree (and what is attached to it) moves with the heart rate
    tau, rr = _beat_times(frames, heart_rate, False, rng)
    move = _contraction(tau, rr)
    amp = rng.uniform(0.6, 1.0)  # pixels
    direction = rng.normal(0, 1, 2)
    direction /= np.linalg.norm(direction)
    rows, cols = np.meshgrid(np.arange(h, dtype=float), np.arange(w, dtype=float), indexing="ij")
    for f in range(frames):
        dy, dx = amp * move[f] * direction
        opacity[f] = map_coordinates(opacity[f], [rows - dy, cols - dx], order=1, mode="constant")

    spine = 25 * np.exp(-((xx + rng.normal(0, 0.1)) / 0.18) ** 2)
    diaphragm = 35 * _sigmoid((yy - 0.6 - 0.15 * xx + rng.normal(0, 0.05)) / 0.04)
    background = (200 - spine - diaphragm) * rng.uniform(0.9, 1.08)
    mu = 7.5 * rng.uniform(0.9, 1.1)
    img = background[None] * np.exp(-mu * opacity)
    img += rng.normal(0, 3.5, img.shape)
    video = np.clip(img, 0, 255).astype(np.uint8)
    return (video, paths) if return_paths else video


def render_angiogram(
    stenosis: np.ndarray,
    rng: np.random.Generator,
    stenosis_position: np.ndarray | None = None,
    shape: tuple[int, int, int] = ANGIOGRAM_SHAPE,
    view: str = "LCA RAO caudal",
) -> np.ndarray:
    """Angiographic runs (N, frames, H, W) uint8; ``stenosis`` (N, 3) is the lumen narrowing (0-1) of LAD, LCx
    and RCA at ``stenosis_position`` (N, 3); one seed per run drawn from ``rng`` (see
    :func:`render_angiogram_run`)."""
    stenosis = np.asarray(stenosis, float)
    n = len(stenosis)
    seeds = rng.integers(0, 2**63 - 1, n)
    out = np.zeros((n, *shape), np.uint8)
    for i in range(n):
        position = None if stenosis_position is None else stenosis_position[i]
        out[i] = render_angiogram_run(stenosis[i], int(seeds[i]), view=view, lesion_position=position, shape=shape)
    return out


# ------------------------------------------------------------------------------------------------ chest X-ray


def _lobe_masks(yy: np.ndarray, xx: np.ndarray, thorax: float) -> dict[str, np.ndarray]:
    """Lung zone of each lobe (the patient's right lung is on the image left)."""
    right, left = xx < 0, xx > 0
    lateral = np.abs(xx) > 0.55 * thorax
    return {
        "right upper lobe": right & (yy < -0.15),
        "right middle lobe": right & (yy >= -0.15) & (yy < 0.2) & ~lateral,
        "right lower lobe": right & ((yy >= 0.2) | ((yy >= -0.15) & lateral)),
        "left upper lobe": left & (yy < 0.05),
        "left lower lobe": left & (yy >= 0.05),
    }


def _lungs(yy: np.ndarray, xx: np.ndarray, thorax: float, cy: float = -0.12) -> np.ndarray:
    lung = np.zeros(yy.shape, bool)
    for side in (-1, 1):
        lung |= ((xx - side * thorax * 0.5) / (thorax * 0.46)) ** 2 + ((yy - cy) / 0.7) ** 2 < 1
    return lung


def render_chest_xray_image(
    cardiothoracic_ratio: float,
    seed: int,
    effusion: bool = False,
    edema: bool = False,
    consolidation: str | None = None,
    pacemaker: bool = False,
    female: bool = False,
    view: str = "PA",
    shape: tuple[int, int] = CHEST_XRAY_SHAPE,
) -> np.ndarray:
    """One frontal chest radiograph (H, W) uint8 with the given cardiothoracic ratio, pleural effusions,
    pulmonary edema, a consolidation in one of :data:`LUNG_LOBES` (or ``None``) and a pacemaker."""
    if view not in CHEST_XRAY_VIEWS:
        raise ValueError(f"unknown chest X-ray view {view!r}; known: {list(CHEST_XRAY_VIEWS)}")
    if consolidation is not None and consolidation not in LUNG_LOBES:
        raise ValueError(f"unknown lobe {consolidation!r}; known: {list(LUNG_LOBES)}")
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = _grid(h, w)
    shift = rng.normal(0, 0.02, 2)
    yy, xx = yy - shift[0], xx - shift[1]
    thorax = (0.74 if female else 0.8) + rng.normal(0, 0.025)
    img = np.full((h, w), 20.0)
    body = (np.abs(xx) < thorax + 0.14) & (yy > -0.97)
    img = np.where(body, 110.0, img)
    lung = _lungs(yy, xx, thorax)
    texture = gaussian_filter(rng.normal(0, 1, (h, w)), 3.0)
    texture /= texture.std()
    hilum = np.exp(-((np.abs(xx) - 0.22) ** 2 + (yy + 0.02) ** 2) / (2 * 0.2**2))
    img = np.where(lung, 32.0 + (3 + 8 * hilum) * texture + 18 * hilum, img)
    for k in range(9):  # posterior ribs
        y0 = -0.78 + 0.17 * k + rng.normal(0, 0.01)
        rib = np.abs(yy - (y0 + 0.3 * (np.abs(xx) / thorax) ** 2 - 0.12 * np.abs(xx))) < 0.025
        img = np.where(rib & body & (np.abs(xx) > 0.08), img + 22.0, img)
    clavicle = (np.abs(yy - (-0.74 + 0.14 * np.abs(xx))) < 0.03) & (np.abs(xx) > 0.1) & (np.abs(xx) < 0.62)
    img = np.where(clavicle, 170.0, img)
    if female:
        for side in (-1, 1):
            breast = ((xx - side * 0.5 * thorax) / 0.32) ** 2 + ((yy - 0.42) / 0.2) ** 2 < 1
            img = np.where(breast & body, img + 22.0, img)
    mediastinum = (np.abs(xx) < 0.14) & (yy > -0.75) & (yy < 0.1)
    img = np.where(mediastinum, 150.0, img)
    knob = np.hypot(xx - 0.14, yy + 0.36) < 0.07
    img = np.where(knob, 158.0, img)
    spine = (np.abs(xx) < 0.065) & body
    img = np.where(spine, 165.0, img)
    heart_half = float(cardiothoracic_ratio) * thorax
    heart = (((xx - 0.12 * heart_half) / heart_half) ** 2 + ((yy - 0.3) / 0.31) ** 2 < 1) & (yy > -0.05)
    img = np.where(heart, 178.0, img)
    # hemidiaphragms: each dome highest under the middle of its lung (the right one a little higher)
    dome = (yy > 0.5 + 0.35 * ((np.abs(xx) - 0.5 * thorax) / (0.5 * thorax)) ** 2 - 0.04 * (xx < 0)) & body
    img = np.where(dome, 158.0, img)
    lung &= ~(heart | mediastinum | knob | spine | dome)  # the aerated lung that is seen
    if effusion:  # fluid in the costophrenic angles, with a meniscus
        zone = (yy > 0.36 + 0.12 * np.cos(np.pi * xx)) & (np.abs(xx) > 0.35 * thorax) & lung
        img = np.where(zone, 140.0, img)
    # the findings' random draws are made whether or not the finding is present, so that one seed gives the same
    # image apart from the finding
    severity = rng.uniform(0.8, 1.2)
    lines = [(rng.choice([-1, 1]), rng.uniform(0.7, 0.86), rng.uniform(0.15, 0.5), rng.uniform(0.05, 0.09))
             for _ in range(int(rng.integers(8, 15)))]
    blobs = [(rng.random(), rng.uniform(0.07, 0.13)) for _ in range(int(rng.integers(2, 5)))]
    density = rng.uniform(0.85, 1.1)
    if edema:  # perihilar (bat-wing) haze, denser in the lower zones, and Kerley B lines
        haze = 60 * severity * np.exp(-((np.abs(xx) - 0.3) ** 2 + (yy - 0.05) ** 2) / (2 * 0.24**2))
        haze += 20 * severity * _sigmoid((yy - 0.1) / 0.1)
        img = np.where(lung, img + haze, img)
        kerley = np.zeros((h, w), bool)
        for side, x0, y0, length in lines:
            kerley |= (np.abs(yy - y0) < 0.007) & (np.abs(xx - side * x0 * thorax) < length / 2)
        img = np.where(kerley & lung, img + 40.0, img)
    if consolidation is not None:  # a dense patch confined to its lobe
        zone = _lobe_masks(yy, xx, thorax)[consolidation] & lung
        ys, xs = yy[zone], xx[zone]
        patch = np.zeros((h, w))
        for u, sigma in blobs:
            k = min(int(u * len(ys)), len(ys) - 1)
            patch += np.exp(-((yy - ys[k]) ** 2 + (xx - xs[k]) ** 2) / (2 * sigma**2))
        patch = np.clip(patch, 0, 1) * gaussian_filter(zone.astype(float), 2.0)
        img = img + 95 * density * patch
    img = gaussian_filter(img, 1.2)
    if pacemaker:
        gx, gy = 0.52 * thorax, -0.62
        box = (np.abs(xx - gx) < 0.085) & (np.abs(yy - gy) < 0.055)
        corners = np.hypot(np.maximum(np.abs(xx - gx) - 0.06, 0), np.maximum(np.abs(yy - gy) - 0.03, 0)) < 0.025
        img = np.where(box & corners, 248.0, img)
        apex = np.array([0.12 * heart_half + 0.55 * heart_half, 0.42])
        lead = np.concatenate([
            _bezier(np.array([gx - 0.08, gy]), np.array([0.1, -0.72]), np.array([-0.05, -0.45]), 80),
            _bezier(np.array([-0.05, -0.45]), np.array([-0.1, 0.2]), apex, 120),
        ])
        img = np.where(_near_polyline(yy, xx, lead, 0.011), 235.0, img)
    ap_exposure = rng.uniform(0.9, 1.0)
    if view == "AP":
        img = img * ap_exposure + 8.0
    img = img * rng.uniform(0.93, 1.07) + rng.normal(0, 4, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def render_chest_xray(
    cardiothoracic_ratio: np.ndarray,
    rng: np.random.Generator,
    effusion: np.ndarray | None = None,
    shape: tuple[int, int] = CHEST_XRAY_SHAPE,
    edema: np.ndarray | None = None,
    consolidation: Sequence[str | None] | None = None,
    pacemaker: np.ndarray | None = None,
) -> np.ndarray:
    """Frontal chest radiographs (N, H, W) uint8, one seed per image drawn from ``rng`` (see
    :func:`render_chest_xray_image`)."""
    ctr = np.asarray(cardiothoracic_ratio, float)
    n = len(ctr)
    seeds = rng.integers(0, 2**63 - 1, n)
    eff = np.zeros(n, bool) if effusion is None else np.asarray(effusion, bool)
    ed = np.zeros(n, bool) if edema is None else np.asarray(edema, bool)
    cons = [None] * n if consolidation is None else list(consolidation)
    pace = np.zeros(n, bool) if pacemaker is None else np.asarray(pacemaker, bool)
    out = np.zeros((n, *shape), np.uint8)
    for i in range(n):
        out[i] = render_chest_xray_image(float(ctr[i]), int(seeds[i]), effusion=bool(eff[i]), edema=bool(ed[i]),
                                         consolidation=cons[i], pacemaker=bool(pace[i]), shape=shape)
    return out


# ----------------------------------------------------------------------------------------------------- reports


def echo_report(
    lvef: float,
    ivs_thickness: float,
    anterior: bool,
    inferior: bool,
    rng: np.random.Generator,
    pacemaker: bool = False,
    atrial_fibrillation: bool = False,
    dyssynchrony: bool = False,
) -> str:
    """Transthoracic echo report stating LVEF (with the wordings "LVEF N%", "The left ventricular ejection
    fraction is estimated to be N%", "LV ejection fraction is N%", ...), systolic function, LV size, wall
    thickness, regional wall motion, septal dyssynchrony, the rhythm and a pacemaker lead."""
    ef = int(round(lvef))
    if lvef >= 52:
        function = _pick(rng, ("Normal left ventricular systolic function", "Preserved LV systolic function",
                               "Left ventricular systolic function is normal"))
    elif lvef >= 40:
        function = _pick(rng, ("Mildly reduced left ventricular systolic function", "Mildly reduced LV function"))
    elif lvef >= 30:
        function = _pick(rng, ("Moderately reduced left ventricular systolic function",
                               "Moderate LV systolic dysfunction"))
    else:
        function = _pick(rng, ("Severely reduced left ventricular systolic function",
                               "Severe LV systolic dysfunction"))
    ef_text = _pick(rng, (
        f"LVEF {ef}%", f"The left ventricular ejection fraction is estimated to be {ef}%",
        f"LV ejection fraction is {ef}%", f"Ejection fraction estimated at {ef}%", f"EF {ef}%",
        f"Left ventricular ejection fraction {ef}%", f"Estimated LVEF of {ef}%",
    ))
    parts = [function, ef_text] if rng.random() < 0.6 else [ef_text, function]
    if lvef < 40:
        parts.append(_pick(rng, ("The left ventricle is dilated", "Dilated left ventricle")))
    if ivs_thickness >= 12.5:
        parts.append(_pick(rng, (
            f"Concentric left ventricular hypertrophy, interventricular septum {ivs_thickness:.0f} mm",
            f"Increased wall thickness (septum {ivs_thickness:.0f} mm) consistent with LVH",
            "Moderate concentric left ventricular hypertrophy",
        )))
    elif rng.random() < 0.6:
        parts.append(f"Normal wall thickness (septum {ivs_thickness:.0f} mm)")
    if anterior:
        parts.append(_pick(rng, ("Akinesis of the anterior wall, septum and apex (LAD territory)",
                                 "Anteroseptal and apical akinesis", "Regional wall motion abnormality in the LAD "
                                 "territory")))
    if inferior:
        parts.append(_pick(rng, ("Inferior wall akinesis (RCA territory)", "Akinetic inferior and basal "
                                 "inferoseptal walls", "Regional wall motion abnormality in the RCA territory")))
    if not anterior and not inferior:
        parts.append(_pick(rng, ("No regional wall motion abnormality", "Normal regional wall motion")))
    if dyssynchrony:
        parts.append(_pick(rng, ("Abnormal septal motion consistent with conduction delay",
                                 "Septal dyssynchrony")))
    if pacemaker:
        parts.append(_pick(rng, (
            "Echo density in right ventricle suggestive of catheter, pacer lead, or ICD lead",
            "Pacemaker lead seen in the right ventricle", "A device lead is visualized in the right heart",
            "Pacer wire in the RV",
        )))
    if atrial_fibrillation and rng.random() < 0.6:
        parts.append(_pick(rng, ("The rhythm was atrial fibrillation during the study", "Irregular rhythm")))
    return ". ".join(parts) + "."


def angiogram_report(
    stenosis: Sequence[float],
    rng: np.random.Generator,
    lesion_position: Sequence[float] | None = None,
    stented: Sequence[bool] | None = None,
    pacemaker: bool = False,
) -> str:
    """Coronary angiography report naming each artery's narrowing: total occlusion (>=
    :data:`OCCLUSION_THRESHOLD`, "LAD had an occlusion", "100% occluded ..."), severe (>= 70 %), moderate, or no
    significant disease, a patent stent where ``stented``, and the number of diseased vessels; sometimes as a
    numbered conclusion."""
    pos = np.full(3, 0.3) if lesion_position is None else np.asarray(lesion_position, float)
    stent = np.zeros(3, bool) if stented is None else np.asarray(stented, bool)
    findings = []
    for name, s, u, st in zip(CORONARY_ARTERIES, stenosis, pos, stent):
        full = _ARTERY_NAMES[name]
        segment = "proximal" if u < 0.25 else "mid"
        pct = int(round(100 * s / 5.0) * 5)
        if s >= OCCLUSION_THRESHOLD:
            findings.append(_pick(rng, (
                f"{name} had an occlusion", f"100% occluded {full}", f"Total occlusion of the {segment} {full} "
                f"({name})", f"{segment.capitalize()} {name}: 100% occlusion", f"The {segment} {name} is totally "
                "occluded",
            )))
        elif s >= SIGNIFICANT_STENOSIS:
            findings.append(_pick(rng, (
                f"Severe {pct}% stenosis of the {segment} {full} ({name})", f"{segment.capitalize()} {name}: "
                f"{pct}% stenosis", f"{pct}% lesion in the {segment} {name}",
            )))
        elif s >= 0.3:
            findings.append(_pick(rng, (f"Moderate {pct}% stenosis of the {name}", f"{name}: {pct}% narrowing")))
        elif st:
            findings.append(_pick(rng, (f"Patent stent in the {segment} {name}", f"Widely patent {name} stent")))
        elif rng.random() < 0.5:
            findings.append(_pick(rng, (f"{name} without significant disease", f"Normal {name}",
                                        f"Mild luminal irregularities of the {name}")))
    diseased = sum(s >= SIGNIFICANT_STENOSIS for s in stenosis)
    if diseased == 0:
        findings.append(_pick(rng, ("No angiographically significant coronary artery disease",
                                    "No obstructive coronary artery disease")))
    else:
        findings.append(("Single", "Two", "Three")[diseased - 1] + "-vessel coronary artery disease")
    if pacemaker and rng.random() < 0.5:
        findings.append("Pacemaker lead noted")
    if rng.random() < 0.4:
        return "Conclusion: " + " ".join(f"{i + 1}. {f}." for i, f in enumerate(findings))
    return ". ".join(findings) + "."


def chest_xray_report(
    cardiothoracic_ratio: float,
    effusion: bool,
    rng: np.random.Generator,
    edema: bool = False,
    consolidation: str | None = None,
    pacemaker: bool = False,
    previous: Mapping[str, bool] | None = None,
) -> str:
    """Chest radiograph report stating heart size (cardiomegaly when the cardiothoracic ratio is > 0.5),
    pulmonary edema, consolidation (with its lobe), pleural effusions and a pacemaker; ``previous`` (the findings
    ``edema`` and ``consolidation`` of the patient's prior radiograph) adds comparisons ("Edema is unchanged")."""
    parts = []
    ctr = cardiothoracic_ratio
    if ctr > 0.5:
        parts.append(_pick(rng, (f"Cardiomegaly (cardiothoracic ratio {ctr:.2f})", "The heart is enlarged",
                                 "Enlarged cardiac silhouette", "Cardiomegaly")))
    else:
        parts.append(_pick(rng, ("Normal heart size", "Heart size is normal",
                                 "Cardiac silhouette within normal limits")) + f" (cardiothoracic ratio {ctr:.2f})")
    prior = dict(previous or {})
    if edema:
        parts.append(_pick(rng, ("There is a pulmonary edema in the lung", "Pulmonary edema",
                                 "Perihilar haziness and Kerley B lines consistent with interstitial pulmonary edema",
                                 "Findings consistent with pulmonary edema", "Vascular congestion with pulmonary "
                                 "edema")))
        if prior.get("edema"):
            parts.append(_pick(rng, ("Edema is unchanged", "Pulmonary edema is unchanged from the prior study")))
    elif prior.get("edema"):
        parts.append("Interval resolution of pulmonary edema")
    elif rng.random() < 0.4:
        parts.append(_pick(rng, ("No pulmonary edema", "No vascular congestion")))
    if consolidation is not None:
        parts.append(_pick(rng, (f"There is consolidation in the {consolidation}", f"Consolidation in the "
                                 f"{consolidation}, concerning for pneumonia", f"Focal airspace consolidation in the "
                                 f"{consolidation}", "There is consolidation in the lung")))
        if prior.get("consolidation"):
            parts.append(_pick(rng, ("Consolidation is unchanged", "The consolidation is unchanged")))
    elif prior.get("consolidation"):
        parts.append("Resolution of the previously seen consolidation")
    elif rng.random() < 0.5:
        parts.append(_pick(rng, ("No focal consolidation", "No consolidation")))
    if effusion:
        parts.append(_pick(rng, ("Small bilateral pleural effusions", "Blunting of the costophrenic angles "
                                 "consistent with small effusions")))
    elif not edema and consolidation is None:
        parts.append(_pick(rng, ("Lungs are clear", "No effusion", "No pleural effusion")))
    if pacemaker:
        parts.append(_pick(rng, ("Pacemaker/ICD device in place", "Left chest wall pacemaker with its lead in the "
                                 "right ventricle", "Cardiac pacemaker in place", "Pacemaker device with a "
                                 "transvenous lead")))
    return ". ".join(parts) + "."
