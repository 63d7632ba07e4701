"""Toy cardiac imaging for the multi-modality model: echo and angiogram videos, chest radiographs, reports.

These are not anatomy; they are images whose content follows the patient's state so that an image encoder
has a known answer to learn:

- **echo** (frames, 64, 64) uint8: an apical-like view of the left ventricle as a bright myocardial ring
  around a dark cavity in an ultrasound sector with speckle. Over one cardiac cycle the cavity shrinks so
  that end-systolic/end-diastolic volume (ellipsoid, ~ radius^3) = 1 - LVEF; wall thickness follows the
  septal thickness (LVH), and infarcted walls (anterior / inferior) do not move.
- **angiogram** (frames, 64, 64) uint8: dark contrast filling three coronary arteries (LAD, LCx, RCA) on a
  bright background over the frames, then washing out; a stenosis narrows the lumen of an artery.
- **chest X-ray** (128, 128) uint8: lungs, spine, diaphragm and a cardiac silhouette whose width is the
  cardiothoracic ratio (cardiomegaly with low LVEF / LVH), with pleural effusions in heart failure.

Each modality has a report writer whose text states what the image shows.
"""

from __future__ import annotations

import numpy as np

ECHO_SHAPE: tuple[int, int, int] = (16, 64, 64)
ANGIOGRAM_SHAPE: tuple[int, int, int] = (16, 64, 64)
CHEST_XRAY_SHAPE: tuple[int, int] = (128, 128)
CORONARY_ARTERIES: tuple[str, ...] = ("LAD", "LCx", "RCA")
_ARTERY_NAMES = {
    "LAD": "left anterior descending artery",
    "LCx": "left circumflex artery",
    "RCA": "right coronary artery",
}


def render_echo(
    lvef: np.ndarray,
    ivs_thickness: np.ndarray,
    rng: np.random.Generator,
    anterior_akinesis: np.ndarray | None = None,
    inferior_akinesis: np.ndarray | None = None,
    shape: tuple[int, int, int] = ECHO_SHAPE,
) -> np.ndarray:
    """Echo-like videos (N, frames, H, W) uint8 for LVEF (%) and septal thickness (mm) per study."""
    n = len(lvef)
    frames, h, w = shape
    lvef = np.clip(np.asarray(lvef, float) / 100.0, 0.05, 0.85)
    ant = np.zeros(n, bool) if anterior_akinesis is None else np.asarray(anterior_akinesis, bool)
    inf = np.zeros(n, bool) if inferior_akinesis is None else np.asarray(inferior_akinesis, bool)
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    phase = np.arange(frames) / frames + rng.uniform(0, 1, (n, 1))
    contraction = 0.5 * (1 - np.cos(2 * np.pi * phase))  # 0 end-diastole, 1 end-systole
    shrink = 1 - (1 - (1 - lvef) ** (1 / 3))[:, None] * contraction  # linear scale of the cavity
    cy = 0.1 + rng.normal(0, 0.03, n)
    a_ed = 0.62 + rng.normal(0, 0.03, n)  # long axis (vertical) at end-diastole
    b_ed = 0.33 + rng.normal(0, 0.02, n)
    wall = np.asarray(ivs_thickness, float) / 10.0 * 0.1
    # polar position on the cavity: anterior wall = left side of the image, inferior wall = right side
    ang = np.arctan2(yy - cy[:, None, None], xx)  # (N, H, W)
    side_ant = (np.cos(ang) < -0.3)[:, None]
    side_inf = (np.cos(ang) > 0.3)[:, None]
    local = shrink[:, :, None, None] * np.ones((1, 1, h, w))
    local = np.where(side_ant & ant[:, None, None, None], 1.0, local)
    local = np.where(side_inf & inf[:, None, None, None], 1.0, local)
    a = a_ed[:, None, None, None] * local
    b = b_ed[:, None, None, None] * local
    dy = (yy[None, None] - cy[:, None, None, None]) / a
    dx = xx[None, None] / b
    r = np.sqrt(dx**2 + dy**2)  # 1 on the endocardium
    thick = (wall[:, None, None, None] * (1 + 0.5 * contraction[:, :, None, None])) / b
    cavity = r < 1
    myocardium = (r >= 1) & (r < 1 + thick)
    img = np.full((n, frames, h, w), 55.0)
    img = np.where(myocardium, 185.0, img)
    img = np.where(cavity, 18.0, img)
    speckle = rng.rayleigh(0.8, size=img.shape)
    img = img * speckle
    fan = (np.abs(np.arctan2(xx, yy + 1.05)) < 0.55) & (np.hypot(xx, yy + 1.05) < 2.0)
    img = np.where(fan[None, None], img, 0.0)
    return np.clip(img, 0, 255).astype(np.uint8)


def _artery_paths(n: int, rng: np.random.Generator, points: int = 48) -> np.ndarray:
    """Centre lines (N, 3 arteries, points, 2) in [-1, 1] image coordinates (y, x)."""
    u = np.linspace(0, 1, points)
    jitter = rng.normal(0, 0.04, (n, 3, 4))
    # LAD: down the left of the image; LCx: curving to the right; RCA: arc down the far right
    lad = np.stack([-0.7 + 1.5 * u, -0.05 - 0.35 * u + 0.08 * np.sin(3 * u)], -1)
    lcx = np.stack([-0.7 + 0.9 * u, -0.05 + 0.55 * u - 0.2 * u**2], -1)
    rca = np.stack([-0.5 + 1.3 * u, 0.45 + 0.35 * np.sin(2.2 * u) - 0.3 * u], -1)
    base = np.stack([lad, lcx, rca])[None]  # (1, 3, P, 2)
    wobble = jitter[..., :2, None] * np.sin(np.pi * u * (1 + jitter[..., 2:3, None] * 10))
    return base + np.moveaxis(wobble, -2, -1)


def render_angiogram(
    stenosis: np.ndarray,
    rng: np.random.Generator,
    stenosis_position: np.ndarray | None = None,
    shape: tuple[int, int, int] = ANGIOGRAM_SHAPE,
) -> np.ndarray:
    """Angiogram-like videos (N, frames, H, W) uint8; ``stenosis`` (N, 3) is the lumen narrowing (0-1) of
    LAD, LCx and RCA, at ``stenosis_position`` (N, 3) along each artery (0 ostium - 1 distal)."""
    stenosis = np.clip(np.asarray(stenosis, float), 0, 1)
    n = len(stenosis)
    frames, h, w = shape
    pos = rng.uniform(0.2, 0.5, (n, 3)) if stenosis_position is None else np.asarray(stenosis_position, float)
    paths = _artery_paths(n, rng)  # (N, 3, P, 2)
    p = paths.shape[2]
    u = np.linspace(0, 1, p)
    radius = (0.075 - 0.035 * u)[None, None, :] * np.array([1.0, 0.85, 1.0])[None, :, None]
    radius = radius * (1 - stenosis[:, :, None] * np.exp(-(((u[None, None] - pos[:, :, None]) / 0.045) ** 2)))
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    grid = np.stack([yy.ravel(), xx.ravel()], -1).astype(np.float32)  # (HW, 2)
    img = np.full((n, frames, h * w), 200.0, dtype=np.float32)
    fill = np.clip(np.arange(frames) / (0.5 * frames), 0, 1)  # contrast front along the artery
    wash = np.clip((frames - 1 - np.arange(frames)) / (0.25 * frames), 0.25, 1)
    for i in range(n):
        d = np.linalg.norm(grid[None, None] - paths[i, :, :, None, :].astype(np.float32), axis=-1)  # (3, P, HW)
        inside = d < radius[i, :, :, None]
        for f in range(frames):
            reached = (u <= fill[f])[None, :, None]
            vessel = (inside & reached).any(axis=(0, 1))
            img[i, f] = np.where(vessel, 200.0 - 150.0 * wash[f], img[i, f])
    img += rng.normal(0, 8, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8).reshape(n, frames, h, w)


def render_chest_xray(
    cardiothoracic_ratio: np.ndarray,
    rng: np.random.Generator,
    effusion: np.ndarray | None = None,
    shape: tuple[int, int] = CHEST_XRAY_SHAPE,
) -> np.ndarray:
    """Frontal chest radiograph-like images (N, H, W) uint8 with the given cardiothoracic ratio."""
    ctr = np.asarray(cardiothoracic_ratio, float)
    n = len(ctr)
    h, w = shape
    eff = np.zeros(n, bool) if effusion is None else np.asarray(effusion, bool)
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    yy, xx = yy[None], xx[None]
    thorax = 0.8 + rng.normal(0, 0.03, (n, 1, 1))  # half-width of the thorax
    img = np.full((n, h, w), 40.0)
    body = (np.abs(xx) < thorax + 0.12) & (yy > -0.95)
    img = np.where(body, 120.0, img)
    lung_cy = -0.1
    for side in (-1, 1):
        lung = ((xx - side * thorax * 0.5) / (thorax * 0.47)) ** 2 + ((yy - lung_cy) / 0.72) ** 2 < 1
        img = np.where(lung, 35.0, img)
    spine = np.abs(xx) < 0.07
    img = np.where(spine & body, 175.0, img)
    heart_half = (ctr[:, None, None] * thorax)  # transverse half-width so that width / thorax width = CTR
    heart = ((xx - 0.12 * heart_half) / heart_half) ** 2 + ((yy - 0.38) / 0.34) ** 2 < 1
    img = np.where(heart, 185.0, img)
    diaphragm = yy > 0.62 + 0.08 * np.cos(np.pi * xx)
    img = np.where(diaphragm & body, 160.0, img)
    effusion_zone = (yy > 0.38 + 0.12 * np.cos(np.pi * xx)) & (np.abs(xx) > 0.35 * thorax) & body
    img = np.where(eff[:, None, None] & effusion_zone, 150.0, img)
    # soft blur (3x3 box, twice) and quantum noise
    for _ in range(2):
        pad = np.pad(img, ((0, 0), (1, 1), (1, 1)), mode="edge")
        img = sum(pad[:, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0
    img += rng.normal(0, 5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def echo_report(lvef: float, ivs_thickness: float, anterior: bool, inferior: bool, rng: np.random.Generator) -> str:
    """Transthoracic echo report stating LVEF, systolic function, wall thickness and regional motion."""
    parts = []
    ef = int(round(lvef))
    if lvef >= 52:
        parts.append(rng.choice(["Normal left ventricular systolic function", "Preserved LV systolic function"]))
    elif lvef >= 40:
        parts.append("Mildly reduced left ventricular systolic function")
    elif lvef >= 30:
        parts.append("Moderately reduced left ventricular systolic function")
    else:
        parts.append("Severely reduced left ventricular systolic function")
    parts.append(rng.choice([f"LVEF {ef}%", f"Ejection fraction estimated at {ef}%", f"EF {ef}%"]))
    if ivs_thickness >= 12.5:
        parts.append(f"Concentric left ventricular hypertrophy, interventricular septum {ivs_thickness:.0f} mm")
    else:
        parts.append(f"Normal wall thickness (septum {ivs_thickness:.0f} mm)")
    if anterior:
        parts.append("Akinesis of the anterior wall and septum (LAD territory)")
    if inferior:
        parts.append("Inferior wall akinesis (RCA territory)")
    if not anterior and not inferior:
        parts.append("No regional wall motion abnormality")
    return ". ".join(str(p) for p in parts) + "."


def angiogram_report(stenosis: np.ndarray, rng: np.random.Generator) -> str:
    """Coronary angiography report naming each artery's narrowing (significant when >= 70 %)."""
    parts = []
    for name, s in zip(CORONARY_ARTERIES, stenosis):
        pct = int(round(100 * s / 5.0) * 5)
        full = _ARTERY_NAMES[name]
        if s >= 0.95:
            parts.append(f"Total occlusion of the proximal {full} ({name})")
        elif s >= 0.7:
            parts.append(f"Severe {pct}% stenosis of the {full} ({name})")
        elif s >= 0.3:
            parts.append(f"Moderate {pct}% stenosis of the {name}")
        elif rng.random() < 0.5:
            parts.append(f"{name} without significant disease")
    if not any(s >= 0.7 for s in stenosis):
        parts.append("No angiographically significant coronary artery disease")
    return ". ".join(parts) + "."


def chest_xray_report(cardiothoracic_ratio: float, effusion: bool, rng: np.random.Generator) -> str:
    """Chest radiograph report stating heart size (cardiothoracic ratio) and pleural effusions."""
    parts = []
    if cardiothoracic_ratio > 0.5:
        parts.append(f"Cardiomegaly (cardiothoracic ratio {cardiothoracic_ratio:.2f})")
    else:
        parts.append(rng.choice(["Normal heart size", "Heart size is normal"])
                     + f" (cardiothoracic ratio {cardiothoracic_ratio:.2f})")
    parts.append("Small bilateral pleural effusions" if effusion else rng.choice(["Lungs are clear", "No effusion"]))
    return ". ".join(parts) + "."
