"""Views of ECG records for self-supervised contrastive learning (:class:`ECGViewMaker`).

A view maker turns a batch of whole records (N, leads, T) into ``num_views`` views of ``view_length`` samples per
record, the views of record n at rows ``n * num_views ...`` (consecutive), which a contrastive loss then treats as
positives of each other (same ``positive_ids``). The kinds:

- ``"crop"``: one random window, all leads (for the strategies whose positives are other records: PCLR,
  demographics, rhythm, wave attributes).
- ``"cmsc"``: two adjacent, non-overlapping windows of the same record, all leads (CLOCS CMSC, Kiyasseh et al.
  2021); the record must hold ``2 * view_length`` samples.
- ``"cmlc"``: one window seen from two different recorded leads, each view holding that one lead (the others zero
  and ``lead_mask`` False, so the encoder's lead masking applies) (CLOCS CMLC; the "lead" strategy of the good-views
  paper).
- ``"cmsmlc"``: two adjacent windows, each from a different recorded lead (CLOCS CMSMLC).
- ``"simclr"``: two independently drawn windows, each augmented independently (SimCLR, Chen et al. 2020, with the
  generic time-series augmentations of the good-views paper): rotation of the heart axis, time warping, window
  warping, scaling, flipping and jitter, each applied with its own probability.
- ``"3kg"``: one window, two views each rotated and scaled in vectorcardiogram (VCG) space and mapped back to 12
  leads, then time-masked (3KG, Gopal et al. 2021).

The augmentations come from the ``ecg-augmentations`` package wherever it has them: ``GaussianNoise`` (jitter),
``AmplitudeScale`` (scaling), ``Invert`` (flipping), ``VCGRotation`` (rotation through the Kors matrix, and the
``vcg_matrix="kors"`` spatial transform of 3KG), ``RandomTimeWarp`` (time warping), ``TimeMask`` (3KG masking) and
``Compose``. Written here, because the package has no equivalent:

- :class:`WindowWarp`: window warping (Le Guennec, Malinowski & Tavenard 2016; in the survey of Iwana & Uchida
  2021): a random window of ``window_ratio`` of the view is slowed down or sped up by a factor and the record
  resampled back to its length, endpoints kept.
- :class:`DowerVCGRotation`: 3KG's own path (``vcg_matrix="dower"``): the eight independent leads go to the VCG
  with the inverse Dower matrix (the pseudo-inverse of :data:`cardiomm.synthetic.ecg.DOWER_MATRIX`, as in
  Edenbrandt & Pahlm 1988), are rotated and scaled there and come back through the Dower matrix and the limb-lead
  relations (:data:`cardiomm.synthetic.ecg.LEAD_DERIVATION`). Unlike the package's Kors path, which keeps the part of
  the signal outside the VCG subspace, this projects the record onto the dipole model, as 3KG does.
- :class:`StandardLeadOrder`: runs a transform written for the 12 standard leads in the package's order (I, II, III,
  aVR, aVL, aVF, V1-V6) on records whose leads are in another order, matching them by name.
- the CLOCS segment and lead views.
- :class:`InPlaceCompose`: the package's ``Compose`` with one working copy of the batch for all its steps (the
  package's transforms each copy the whole batch when their probability picks only some records); same draws,
  same result.

The VCG transforms mix leads in physical units: give the view maker millivolts (the
:class:`~cardiomm.data.collators.SelfSupervisedCollator` does, and normalises the views afterwards with each
record's statistics). A record that lacks one of I, II, V1-V6 (an all-zero lead in its window) is left out of the
VCG transforms (it still gets the other augmentations). Absent leads (``lead_mask`` False) are zero in every view
and stay False.

Every random draw comes from torch's global generator (the package's transforms with ``generator=None``, and
``torch.randint``/``torch.rand`` here), so ``torch.manual_seed`` and the training loop's seeding make the views
reproducible. Everything is computed for the whole batch at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import ecg_augmentations as ea
import numpy as np
import torch
from ecg_augmentations.augmentations.leads import rotation
from ecg_augmentations.base import as_range, randint, uniform
from ecg_augmentations.ops import interp

from ..processing.ecg_records import canonical_lead_name

VIEW_KINDS: tuple[str, ...] = ("crop", "cmsc", "cmlc", "cmsmlc", "simclr", "3kg")
VCG_MATRICES: tuple[str, ...] = ("kors", "dower")
STANDARD_LEADS: tuple[str, ...] = tuple(ea.LEADS)
"""The 12 leads in the order the package's lead transforms expect."""
INDEPENDENT_LEADS: tuple[str, ...] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
"""The eight leads the VCG transforms read (the other four follow from I and II)."""

SIMCLR_OPTIONS: dict[str, Any] = {
    "rotation_p": 0.5,  # probability of a rotation of the heart axis (package VCGRotation, Kors matrix)
    "rotation_angle": 15.0,  # maximum rotation in degrees about each VCG axis (the package's default)
    "time_warp_p": 0.5,  # probability of a smooth monotonic time warp (package RandomTimeWarp)
    "time_warp_sigma": (0.0, 0.3),  # its strength: local speed varies by about exp(+-sigma) (package default)
    "window_warp_p": 0.5,  # probability of window warping (WindowWarp)
    "window_warp_ratio": 0.1,  # window length as a fraction of the view (Le Guennec et al. 2016)
    "window_warp_scales": (0.5, 2.0),  # speed factors, one drawn per view (Le Guennec et al. 2016)
    "scaling_p": 0.5,  # probability of amplitude scaling (package AmplitudeScale, log-uniform factor)
    "scaling_range": (0.5, 2.0),  # its factor range (the package's default)
    "flip_p": 0.5,  # probability of flipping the polarity (package Invert)
    "jitter_p": 0.5,  # probability of white Gaussian noise (package GaussianNoise)
    "jitter_snr_db": (15.0, 35.0),  # its signal-to-noise ratio in dB, per lead (the package's default)
}
"""Options of ``kind="simclr"`` and their defaults; the transforms run in this order."""

THREE_KG_OPTIONS: dict[str, Any] = {
    "vcg_matrix": "dower",  # "dower" (3KG's inverse Dower / Dower path) or "kors" (the package's VCGRotation)
    "max_angle": 45.0,  # rotation about each VCG axis drawn from U(-max_angle, max_angle) degrees
    "scale_range": (1.0, 1.5),  # scale of each VCG axis drawn from U(scale_range)
    "mask_ratio": 0.5,  # one time mask of mask_ratio * view_length samples, shared by the leads (0: none)
}
"""Options of ``kind="3kg"`` and their defaults: rotation up to 45 degrees and scaling by 1 to 1.5 per VCG axis, and
half of the view masked, the settings of 3KG (Gopal et al. 2021) as the public reimplementation in fairseq-signals
(Oh et al.) sets them (angle 45, scale U(1, 1.5), mask ratio 0.5); the EHR paper, which compares against 3KG, gives
no values. The mask here is the package's ``TimeMask``: one window shared by the leads."""

VIEW_OPTIONS: dict[str, dict[str, Any]] = {
    "crop": {},
    "cmsc": {},
    "cmlc": {},
    "cmsmlc": {},
    "simclr": SIMCLR_OPTIONS,
    "3kg": THREE_KG_OPTIONS,
}


class WindowWarp(ea.Transform):
    """Window warping: a random window is slowed down or sped up by a factor, and the record resampled back to its
    length (linear interpolation), so the rest of the record is squeezed or stretched; the endpoints are kept.

    Args:
        window_ratio: window length as a fraction of the record.
        scales: speed factors, one drawn uniformly per record (> 1 slows the window down: it gets longer).
        p: probability of warping each record.
    """

    def __init__(self, window_ratio: float = 0.1, scales: Sequence[float] = (0.5, 2.0), p: float = 1.0) -> None:
        super().__init__(p)
        if not 0 < window_ratio < 1:
            raise ValueError(f"window_ratio must be in (0, 1), got {window_ratio}")
        scales = (float(scales),) if np.isscalar(scales) else tuple(float(s) for s in scales)
        if not scales or min(scales) <= 0:
            raise ValueError(f"scales must be positive factors, got {scales}")
        self.window_ratio = float(window_ratio)
        self.scales = scales

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b, _, t = x.shape
        width = self.window_ratio * (t - 1)
        factor = torch.tensor(self.scales, dtype=x.dtype, device=x.device)
        factor = factor[randint(0, len(self.scales), (b, 1, 1), x, generator)]
        start = uniform((0, 1), (b, 1, 1), x, generator) * (t - 1 - width)
        # a position on the warped time axis (length t - 1 + (factor - 1) * width), read from the source at:
        warped = torch.arange(t, device=x.device, dtype=x.dtype) * ((t - 1 + (factor - 1) * width) / (t - 1))
        inside = torch.where(warped < start + factor * width, start + (warped - start) / factor,
                             warped - (factor - 1) * width)
        source = torch.where(warped < start, warped, inside)
        return interp(x, source)


class DowerVCGRotation(ea.Transform):
    """3KG's spatial augmentation through the Dower transform: leads I, II, V1-V6 to the VCG with the inverse Dower
    matrix (pseudo-inverse of the Dower matrix), rotation about X, Y and Z by angles drawn from ``angle`` and scaling
    of each axis by factors drawn from ``scale`` (rotate, then scale), back to the 12 leads with the Dower matrix and
    the limb-lead relations. Input: 12 leads in the package's order.

    With no rotation and unit scale the output is the record projected onto the VCG (dipole) subspace: a record
    that is exactly a Dower projection of a VCG (with consistent limb leads) is returned unchanged, any other loses
    its part outside that subspace.

    Args:
        angle: maximum rotation in degrees about each axis, or a (low, high) range.
        scale: scale factor or (low, high) range, drawn per axis.
        p: probability of transforming each record.
    """

    def __init__(self, angle: float | tuple[float, float] = 45.0, scale: float | tuple[float, float] = (1.0, 1.5),
                 p: float = 1.0) -> None:
        super().__init__(p)
        from ..synthetic.ecg import DOWER_MATRIX, LEAD_DERIVATION

        self.angle = as_range((-angle, angle) if np.isscalar(angle) else angle, "angle")
        self.scale = as_range(scale, "scale", low=1e-6)
        self.register_buffer("to_leads", torch.as_tensor(LEAD_DERIVATION @ DOWER_MATRIX, dtype=torch.float32))
        self.register_buffer("to_vcg", torch.as_tensor(np.linalg.pinv(DOWER_MATRIX), dtype=torch.float32))
        self.independent = [STANDARD_LEADS.index(lead) for lead in INDEPENDENT_LEADS]

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.shape[1] != 12:
            raise ValueError(f"expected 12 leads in the order {STANDARD_LEADS}, got {x.shape[1]}")
        b = x.shape[0]
        angles = uniform(self.angle, (b, 3), x, generator) * (math.pi / 180)
        scales = uniform(self.scale, (b, 3), x, generator)
        transform = scales[:, :, None] * rotation(angles)  # diag(scales) @ R
        matrix = self.to_leads.to(x) @ transform @ self.to_vcg.to(x)  # (b, 12, 8)
        return matrix @ x[:, self.independent]


class StandardLeadOrder(ea.Transform):
    """Runs ``transform``, written for the 12 standard leads in the package's order, on records whose leads are
    ``lead_names`` (any order, other leads allowed), matching leads by name; the other leads are left as they are.
    A record lacking one of I, II, V1-V6 (all zero in its window) is left unchanged.

    Raises:
        ValueError: naming the standard leads missing from ``lead_names``.
    """

    def __init__(self, transform: ea.Transform, lead_names: Sequence[str], p: float = 1.0, what: str = "") -> None:
        super().__init__(p)
        position = {canonical_lead_name(name): i for i, name in enumerate(lead_names)}
        missing = [lead for lead in STANDARD_LEADS if lead not in position]
        if missing:
            raise ValueError(
                f"{what or type(transform).__name__} needs the 12 standard leads {list(STANDARD_LEADS)}; "
                f"lead_names {list(lead_names)} lack {missing}"
            )
        self.transform = transform
        self.order = [position[lead] for lead in STANDARD_LEADS]
        self.independent = [STANDARD_LEADS.index(lead) for lead in INDEPENDENT_LEADS]

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        identity = self.order == list(range(x.shape[1]))
        order = torch.as_tensor(self.order, device=x.device)
        standard = x if identity else x[:, order]
        complete = standard.ne(0).any(dim=-1)[:, self.independent].all(dim=-1)
        if identity and bool(complete.all()):  # the records are in the standard order already: no copies
            return self.transform(standard, generator)
        out = x.clone()
        if bool(complete.all()):
            out[:, order] = self.transform(standard, generator)
        elif bool(complete.any()):
            rows = complete.nonzero()[:, 0]
            out[rows[:, None], order[None, :]] = self.transform(standard[rows], generator)
        return out


class InPlaceCompose(ea.Compose):
    """``ea.Compose`` whose steps write the records they transform into one working copy of the batch, instead of
    each step copying the whole batch to change the records its probability picked (what ``Transform.forward``
    does). The random draws, their order and the result are those of ``ea.Compose``."""

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        owned = False  # whether x is a tensor made here (then it may be written in place)
        for step in self.transforms:
            chosen = step.gate(x, generator)
            if bool(chosen.all()):
                y = step.apply(x, generator)
                owned = y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr() or owned
                x = y
            elif bool(chosen.any()):
                if not owned:
                    x, owned = x.clone(), True
                x[chosen] = step.apply(x[chosen], generator)
        return x


class ECGViewMaker:
    """Makes the views of a batch of ECG records for one self-supervised strategy (see the module docstring).

    Args:
        kind: one of :data:`VIEW_KINDS`.
        sampling_rate: of the records, Hz (time masks are set in samples through it).
        lead_names: the records' lead order; the VCG transforms (``"3kg"``, the ``"simclr"`` rotation) find the 12
            standard leads in it by name.
        view_length: samples per view.
        **options: the kind's options (:data:`SIMCLR_OPTIONS`, :data:`THREE_KG_OPTIONS`; the other kinds have
            none), each defaulting as documented there.

    Raises:
        ValueError: an unknown kind or option (naming it), a bad option value, or lead names lacking a lead the
            kind's VCG transform needs (naming the missing leads).
    """

    def __init__(self, kind: str, sampling_rate: float, lead_names: Sequence[str], view_length: int,
                 **options: Any) -> None:
        if kind not in VIEW_KINDS:
            raise ValueError(f"unknown view kind {kind!r}; expected one of {VIEW_KINDS}")
        unknown = sorted(set(options) - set(VIEW_OPTIONS[kind]))
        if unknown:
            known = sorted(VIEW_OPTIONS[kind]) or "none"
            raise ValueError(f"unknown option(s) {unknown} for view kind {kind!r}; its options: {known}")
        if isinstance(view_length, bool) or not isinstance(view_length, (int, np.integer)) or view_length < 2:
            raise ValueError(f"view_length must be an integer of at least 2 samples, got {view_length!r}")
        if not (isinstance(sampling_rate, (int, float, np.number)) and math.isfinite(sampling_rate)
                and sampling_rate > 0):
            raise ValueError(f"sampling_rate must be a positive number, got {sampling_rate!r}")
        if isinstance(lead_names, str) or len(lead_names) == 0:
            raise ValueError(f"lead_names must be a non-empty list of lead names, got {lead_names!r}")
        self.kind = kind
        self.sampling_rate = float(sampling_rate)
        self.lead_names = [canonical_lead_name(name) for name in lead_names]
        self.view_length = int(view_length)
        self.options = {**VIEW_OPTIONS[kind], **options}
        self.num_views = 1 if kind == "crop" else 2
        self.augment = self._augmentations()

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return (f"ECGViewMaker(kind={self.kind!r}, sampling_rate={self.sampling_rate:g}, "
                f"view_length={self.view_length}{options})")

    def _augmentations(self) -> InPlaceCompose | None:
        """The transforms applied to the windows (``simclr`` and ``3kg``), skipping those with probability 0."""
        o = self.options
        steps: list[ea.Transform] = []
        if self.kind == "simclr":
            if o["rotation_p"] > 0:
                steps.append(StandardLeadOrder(ea.VCGRotation(angle=o["rotation_angle"], scale=1.0),
                                               self.lead_names, p=o["rotation_p"], what="the simclr rotation"))
            candidates = [
                (o["time_warp_p"], lambda p: ea.RandomTimeWarp(sigma=o["time_warp_sigma"], p=p)),
                (o["window_warp_p"], lambda p: WindowWarp(o["window_warp_ratio"], o["window_warp_scales"], p=p)),
                (o["scaling_p"], lambda p: ea.AmplitudeScale(scale=o["scaling_range"], p=p)),
                (o["flip_p"], lambda p: ea.Invert(p=p)),
                (o["jitter_p"], lambda p: ea.GaussianNoise(snr_db=o["jitter_snr_db"], p=p)),
            ]
            for p, build in candidates:
                if not 0 <= p <= 1:
                    raise ValueError(f"probabilities must be in [0, 1], got {p}")
                if p > 0:
                    steps.append(build(p))
        elif self.kind == "3kg":
            if o["vcg_matrix"] == "dower":
                spatial = DowerVCGRotation(angle=o["max_angle"], scale=o["scale_range"])
            elif o["vcg_matrix"] == "kors":
                spatial = ea.VCGRotation(angle=o["max_angle"], scale=o["scale_range"])
            else:
                raise ValueError(f"vcg_matrix must be one of {VCG_MATRICES}, got {o['vcg_matrix']!r}")
            steps.append(StandardLeadOrder(spatial, self.lead_names, what="the 3kg views"))
            if not 0 <= o["mask_ratio"] < 1:
                raise ValueError(f"mask_ratio must be in [0, 1), got {o['mask_ratio']}")
            if o["mask_ratio"] > 0:
                seconds = o["mask_ratio"] * self.view_length / self.sampling_rate
                steps.append(ea.TimeMask(self.sampling_rate, duration=seconds, n_masks=1))
        return InPlaceCompose(steps) if steps else None

    def required_length(self) -> int:
        """The fewest samples a record needs for this kind: ``2 * view_length`` for the two adjacent windows of
        ``cmsc``/``cmsmlc``, ``view_length`` otherwise."""
        return 2 * self.view_length if self.kind in ("cmsc", "cmsmlc") else self.view_length

    def __call__(self, ecg: torch.Tensor, lead_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The views of ``ecg`` (N, leads, T) with recorded leads ``lead_mask`` (N, leads): ``(views, view_lead_mask)``
        of shapes (N * num_views, leads, view_length) and (N * num_views, leads), record n's views at rows
        ``n * num_views ... n * num_views + num_views - 1``.

        Raises:
            ValueError: wrong shapes, records shorter than :meth:`required_length` (saying both lengths), or (cmlc,
                cmsmlc) a record with fewer than two recorded leads.
        """
        ecg = torch.as_tensor(ecg)
        lead_mask = torch.as_tensor(lead_mask, device=ecg.device).bool()
        if ecg.ndim != 3 or not ecg.is_floating_point():
            raise ValueError(f"ecg must be a floating-point (records, leads, time) tensor, got {ecg.dtype} "
                             f"of shape {tuple(ecg.shape)}")
        n, leads, length = ecg.shape
        if leads != len(self.lead_names):
            raise ValueError(f"ecg has {leads} leads but the view maker was built for {len(self.lead_names)} "
                             f"({self.lead_names})")
        if lead_mask.shape != (n, leads):
            raise ValueError(f"lead_mask must have shape {(n, leads)}, got {tuple(lead_mask.shape)}")
        need = self.required_length()
        if length < need:
            twice = f" (two adjacent windows of view_length {self.view_length})" if need > self.view_length else ""
            raise ValueError(f"records of {length} samples are too short for {self.kind} views: they need at least "
                             f"{need} samples{twice} at {self.sampling_rate:g} Hz")
        if n == 0:
            return ecg.new_zeros(0, leads, self.view_length), lead_mask.new_zeros(0, leads)
        device, views = ecg.device, self.num_views
        if self.kind in ("cmsc", "cmsmlc"):  # two adjacent windows
            first = torch.randint(0, length - need + 1, (n, 1), device=device)
            starts = first + torch.arange(2, device=device) * self.view_length
        elif self.kind in ("cmlc", "3kg"):  # one window, seen twice
            starts = torch.randint(0, length - need + 1, (n, 1), device=device).expand(n, views)
        else:  # crop: one window; simclr: two independent windows
            starts = torch.randint(0, length - need + 1, (n, views), device=device)
        # every window of view_length as a view of ecg (no copy), then only the chosen ones copied out:
        # (N, leads, positions, view_length) indexed at (record, start) -> (N, views, leads, view_length)
        windows = ecg.unfold(-1, self.view_length, 1)[torch.arange(n, device=device)[:, None], :, starts]
        if self.kind in ("cmlc", "cmsmlc"):
            view_mask = self._single_leads(lead_mask)
        else:
            view_mask = lead_mask[:, None].expand(n, views, leads)
        windows = windows.reshape(n * views, leads, self.view_length)
        view_mask = view_mask.reshape(n * views, leads)
        every_lead = bool(view_mask.all())  # then zeroing the absent leads changes nothing
        if not every_lead:
            windows = windows * view_mask[:, :, None]
        if self.augment is not None:
            windows = self.augment(windows)
            if not every_lead:
                windows = windows * view_mask[:, :, None]
        return windows, view_mask

    def _single_leads(self, lead_mask: torch.Tensor) -> torch.Tensor:
        """(N, 2, leads) masks holding one recorded lead each, two different leads per record drawn uniformly."""
        counts = lead_mask.sum(dim=1)
        if bool((counts < 2).any()):
            bad = counts.lt(2).nonzero()[:, 0].tolist()
            raise ValueError(f"{self.kind} views need two recorded leads per record; records {bad[:10]} of the "
                             f"batch have {sorted(set(counts[bad].tolist()))} (lead_mask)")
        scores = torch.rand(lead_mask.shape, device=lead_mask.device).masked_fill(~lead_mask, -1.0)
        chosen = scores.topk(2, dim=1).indices  # (N, 2), two different recorded leads in random order
        return torch.nn.functional.one_hot(chosen, lead_mask.shape[1]).bool()


__all__ = [
    "DowerVCGRotation",
    "ECGViewMaker",
    "InPlaceCompose",
    "INDEPENDENT_LEADS",
    "SIMCLR_OPTIONS",
    "STANDARD_LEADS",
    "StandardLeadOrder",
    "THREE_KG_OPTIONS",
    "VCG_MATRICES",
    "VIEW_KINDS",
    "VIEW_OPTIONS",
    "WindowWarp",
]
