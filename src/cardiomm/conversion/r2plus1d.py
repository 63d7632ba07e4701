"""torchvision's R(2+1)D-18 weights as a cardiomm [`R2Plus1DVideoModel`] checkpoint.

CLERC initialises its echocardiogram and angiogram encoders with the Kinetics-400 weights of torchvision's
`r2plus1d_18` (`r2plus1d_18-91a641e6.pth`, also reachable as `torchvision.models.video.R2Plus1D_18_Weights`). The
cardiomm model has torchvision's module layout, so the file converts tensor by tensor under the same names; only the
400-class classifier `fc.*` is dropped. The conversion is strict: every other tensor of the file must be a weight or
buffer of the model with the same shape, and every weight of the model must be in the file; otherwise a
`ValueError` names the file and the keys.

```text
cardiomm convert r2plus1d --state-dict r2plus1d_18-91a641e6.pth --out r2plus1d-18-kinetics400
```

The output folder loads with `AutoModel.from_pretrained` (and `CLERCMultiEncoder.from_modality_pretrained(echo=...,
angiogram=...)`); it carries the model code, so it also loads with `trust_remote_code=True` without cardiomm.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.initialization import no_init_weights

from ..modeling.configuration_r2plus1d import R2Plus1DConfig
from ..modeling.modeling_r2plus1d import R2Plus1DVideoModel
from .key_listing import dropped_key_lines, listing
from .merl import check_output_dir, file_sha256

#: Source keys dropped on purpose, with the reason.
DROPPED_KEYS: dict[str, str] = {
    "fc.weight": "torchvision's Kinetics-400 classifier (400 classes), not part of the encoder",
    "fc.bias": "torchvision's Kinetics-400 classifier (400 classes), not part of the encoder",
}


@dataclass
class R2Plus1DConversion:
    """What [`convert_r2plus1d_checkpoint`] did.

    Attributes:
        num_converted: source tensors copied into the model.
        num_parameters: parameters of the converted model.
        dropped: source keys left out, with the reason.
        output_dir: the folder written (`save_pretrained` layout).
        source: the file read; sha256: its SHA-256.
    """

    num_converted: int
    num_parameters: int
    dropped: dict[str, str] = field(default_factory=dict)
    output_dir: Path | None = None
    source: Path | None = None
    sha256: str | None = None

    def describe(self) -> str:
        """A short multi-line summary (what `cardiomm convert r2plus1d` prints)."""
        lines = [
            f"R(2+1)D state dict {self.source} (sha256 {self.sha256})",
            f"keys converted: {self.num_converted} ({self.num_parameters:,} parameters)",
        ]
        lines += dropped_key_lines(self.dropped)
        lines.append(f"written to {self.output_dir}")
        return "\n".join(lines)


def load_r2plus1d_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a `.pth` state dict with `torch.load(weights_only=True)` (no code from the file runs); a `state_dict` /
    `model_state_dict` nesting and the `module.` prefix of `DistributedDataParallel` are undone."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such state dict file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights-only errors all mean: not a loadable tensor file
        raise ValueError(f"{path}: cannot be read as a PyTorch state dict ({type(err).__name__}: {err})") from err
    if isinstance(checkpoint, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors); it holds a "
                         f"{type(checkpoint).__name__}{' (empty)' if isinstance(checkpoint, Mapping) else ''}")
    state: dict[str, torch.Tensor] = {}
    for key, value in checkpoint.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: not a state dict: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[key[len("module."):] if key.startswith("module.") else key] = value
    return state


def r2plus1d_state_dict_to_cardiomm(
    state_dict: Mapping[str, torch.Tensor], config: R2Plus1DConfig | None = None, source: str = "<state dict>"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Check a torchvision R(2+1)D state dict against [`R2Plus1DVideoModel`] of `config` (default: `r2plus1d_18`).

    Returns the tensors the model takes (`fc.*` removed) and the keys dropped with the reason. Raises a `ValueError`
    naming `source` and the keys for tensors the model has no place for, weights of the model the file lacks, and
    tensors of the wrong shape.
    """
    config = config if config is not None else R2Plus1DConfig()
    with no_init_weights(), torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in R2Plus1DVideoModel(config).state_dict().items()}
    dropped = {k: reason for k, reason in DROPPED_KEYS.items() if k in state_dict}
    kept = {k: v for k, v in state_dict.items() if k not in dropped}
    problems = []
    unexpected = set(kept) - set(expected)
    missing = set(expected) - set(kept)
    if unexpected:
        problems.append(f"{len(unexpected)} key(s) of the file are not part of the R(2+1)D encoder: "
                        f"{listing(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} weight(s) of the R(2+1)D encoder are missing from the file: "
                        f"{listing(missing)}")
    wrong = [f"{k}: expected {expected[k]}, got {tuple(v.shape)}" for k, v in sorted(kept.items())
             if k in expected and tuple(v.shape) != expected[k]]
    if wrong:
        problems.append(f"{len(wrong)} tensor(s) have the wrong shape for this configuration: "
                        + listing(wrong, "; ", sort=False))
    if problems:
        raise ValueError(f"{source}: cannot convert to an R2Plus1DVideoModel: " + "; ".join(problems))
    return {k: v.contiguous() for k, v in kept.items()}, dropped


def load_r2plus1d_config(path: str | os.PathLike | None) -> R2Plus1DConfig:
    """An `R2Plus1DConfig` from a JSON file of its fields (or a saved `config.json`); default `r2plus1d_18`."""
    if path is None:
        return R2Plus1DConfig()
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such configuration file")
    try:
        return R2Plus1DConfig.from_json_file(str(path))
    except (ValueError, TypeError, OSError) as err:
        raise ValueError(f"{path}: not an R(2+1)D configuration ({type(err).__name__}: {err})") from err


def convert_r2plus1d_checkpoint(
    state_dict: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: R2Plus1DConfig | str | os.PathLike | None = None,
) -> R2Plus1DConversion:
    """Convert a torchvision R(2+1)D `.pth` state dict into an [`R2Plus1DVideoModel`] checkpoint folder.

    Args:
        state_dict: the `.pth` file (e.g. torchvision's Kinetics-400 `r2plus1d_18-91a641e6.pth`).
        out_dir: output folder (created; must be new or empty).
        config: the architecture, an `R2Plus1DConfig` or a JSON file of its fields; default `r2plus1d_18`.

    Raises:
        ValueError: for an unreadable file, keys or shapes that do not fit (see [`r2plus1d_state_dict_to_cardiomm`]),
            or a non-empty `out_dir`.
    """
    from ..hub.remote_code import remote_code_files

    source, out = Path(state_dict), Path(out_dir)
    check_output_dir(out)
    if not isinstance(config, R2Plus1DConfig):
        config = load_r2plus1d_config(config)
    state = load_r2plus1d_state_dict(source)
    weights, dropped = r2plus1d_state_dict_to_cardiomm(state, config, str(source))
    with no_init_weights():  # every weight is loaded next
        model = R2Plus1DVideoModel(config)
    model.load_state_dict(weights, strict=True)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    missing_code = remote_code_files(out).missing
    if missing_code:
        raise RuntimeError(f"{out}: saved without the code files {missing_code}")
    return R2Plus1DConversion(
        num_converted=len(weights),
        num_parameters=sum(p.numel() for p in model.parameters()),
        dropped=dropped,
        output_dir=out,
        source=source,
        sha256=file_sha256(source),
    )


__all__ = [
    "DROPPED_KEYS",
    "R2Plus1DConversion",
    "convert_r2plus1d_checkpoint",
    "load_r2plus1d_config",
    "load_r2plus1d_state_dict",
    "r2plus1d_state_dict_to_cardiomm",
]
