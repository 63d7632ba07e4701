"""Training checkpoints that are written atomically, verified before use and read without running any code.

A checkpoint is a folder ``checkpoints/step_NNNNNN/`` holding

- ``model.safetensors``: the weights (buffers included) of the unwrapped model;
- ``optimizer.safetensors``: every tensor of the optimiser state;
- ``trainer_state.json``: where training stands (step, epoch, batches of the epoch consumed, early-stopping and
  evaluation bookkeeping), the learning-rate schedule, the non-tensor part of the optimiser state, and the size
  and SHA-256 of every other file of the folder.

Only safetensors and JSON are read back, so resuming never unpickles (and never runs) anything from the folder.
Under DeepSpeed the engine writes its own partitioned files instead of the two ``.safetensors`` files; they are
read with ``torch.load(weights_only=True)`` enforced, which refuses arbitrary objects.

The folder is first written as ``checkpoints/.step_NNNNNN.partial`` and renamed when complete, so a run killed
while saving never leaves a half-written checkpoint under a ``step_`` name; :func:`find_resumable_checkpoint`
still checks every file against the sizes and hashes recorded in ``trainer_state.json`` and falls back to the
newest checkpoint that verifies. Verifying hashes every file once; the :class:`VerifiedCheckpoint` it returns is
what resuming loads, so the files are not hashed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

CHECKPOINTS_FOLDER = "checkpoints"  # under a run's output_dir
CHECKPOINT_PREFIX = "step_"
TRAINER_STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
CHECKPOINT_FORMAT = 1
PARTIAL_SUFFIX = ".partial"


class DamagedCheckpointError(ValueError):
    """A checkpoint folder that is incomplete, truncated, altered or not a cardiomm checkpoint."""


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A checkpoint folder whose files matched the sizes and SHA-256 recorded in its ``trainer_state.json``.

    Returned by :func:`verify_checkpoint`, :func:`find_resumable_checkpoint` and
    :func:`resolve_resume_checkpoint`; the training loop resumes from it without hashing the files again.

    Attributes:
        path: the checkpoint folder.
        document: its parsed ``trainer_state.json``.
    """

    path: Path
    document: dict[str, Any]


# --------------------------------------------------------------------------------------------------------------------
def state_to_json(tree: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """A JSON-ready copy of a nested state (``state_dict`` of an optimiser, a schedule, ...): tensors are moved to
    ``tensors`` under ``prefix`` names and referenced by name; tuples and non-string dict keys are kept."""
    if isinstance(tree, torch.Tensor):
        name = prefix
        tensor = tree.detach().cpu().contiguous()
        if any(t.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr() for t in tensors.values()):
            tensor = tensor.clone()  # safetensors refuses tensors that share memory
        tensors[name] = tensor
        return {"__tensor__": name}
    if isinstance(tree, Mapping):
        return {"__dict__": [[_json_key(key, prefix), state_to_json(value, tensors, f"{prefix}.{key}")]
                             for key, value in tree.items()]}
    if isinstance(tree, tuple):
        return {"__tuple__": [state_to_json(v, tensors, f"{prefix}.{i}") for i, v in enumerate(tree)]}
    if isinstance(tree, list):
        return [state_to_json(v, tensors, f"{prefix}.{i}") for i, v in enumerate(tree)]
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"cannot store {prefix} ({type(tree).__name__}) in a checkpoint: only tensors, numbers, "
                    "strings, lists, tuples and dicts are stored")


def state_from_json(tree: Any, tensors: Mapping[str, torch.Tensor], where: str) -> Any:
    """Inverse of :func:`state_to_json`."""
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            name = tree["__tensor__"]
            if name not in tensors:
                raise DamagedCheckpointError(f"{where}: tensor {name!r} is missing")
            return tensors[name]
        if set(tree) == {"__tuple__"}:
            return tuple(state_from_json(v, tensors, where) for v in tree["__tuple__"])
        if set(tree) == {"__dict__"}:
            return {key: state_from_json(value, tensors, where) for key, value in tree["__dict__"]}
        raise DamagedCheckpointError(f"{where}: unexpected entry {sorted(tree)}")
    if isinstance(tree, list):
        return [state_from_json(v, tensors, where) for v in tree]
    return tree


def _json_key(key: Any, where: str) -> str | int:
    if isinstance(key, (str, int)) and not isinstance(key, bool):
        return key
    raise TypeError(f"cannot store the key {key!r} of {where} in a checkpoint")


# --------------------------------------------------------------------------------------------------------------------
def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def completed_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """Checkpoint folders (``step_NNNNNN`` with ``trainer_state.json``) under ``checkpoint_dir``, oldest first.

    They are complete as far as their names go (folders are renamed once written); :func:`verify_checkpoint`
    checks their content.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = [
        p
        for p in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if p.is_dir() and (p / TRAINER_STATE_FILE).is_file() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def partial_folder(checkpoint_dir: Path, step: int) -> Path:
    """Where checkpoint ``step`` is written before it is renamed to its final name."""
    return checkpoint_dir / f".{checkpoint_name(step)}{PARTIAL_SUFFIX}"


def remove_partial_checkpoints(checkpoint_dir: Path) -> None:
    """Delete folders left by a run killed while saving."""
    if checkpoint_dir.is_dir():
        for leftover in checkpoint_dir.glob(f".{CHECKPOINT_PREFIX}*{PARTIAL_SUFFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)


def write_trainer_state(folder: Path, values: dict[str, Any]) -> None:
    """Write ``trainer_state.json`` with the size and SHA-256 of every other file of ``folder``, flushed to disk."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative != TRAINER_STATE_FILE:
            _fsync(path)
            files[relative] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    document = {"format": CHECKPOINT_FORMAT, **values, "files": files}
    target = folder / TRAINER_STATE_FILE
    with open(target, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


def publish(partial: Path, final: Path) -> None:
    """Rename a fully written checkpoint folder to its final name (replacing a folder of the same name)."""
    _fsync_dir(partial)
    if final.exists():
        stale = final.with_name(f".{final.name}.replaced{PARTIAL_SUFFIX}")
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(final, stale)
        os.replace(partial, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(partial, final)
    _fsync_dir(final.parent)


def verify_checkpoint(folder: str | Path) -> VerifiedCheckpoint:
    """Read ``trainer_state.json`` of ``folder`` and check every file it lists (size and SHA-256, each file read
    once).

    Returns:
        the folder with its parsed ``trainer_state.json``.

    Raises:
        DamagedCheckpointError: naming the file and what is wrong with it.
    """
    folder = Path(folder)
    state_file = folder / TRAINER_STATE_FILE
    if not folder.is_dir():
        raise DamagedCheckpointError(f"{folder}: no such checkpoint folder")
    if not state_file.is_file():
        raise DamagedCheckpointError(f"{state_file}: missing, {folder} is not a complete checkpoint")
    try:
        document = json.loads(state_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedCheckpointError(f"{state_file}: not valid JSON ({err})") from None
    if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise DamagedCheckpointError(
            f"{state_file}: not a cardiomm checkpoint of format {CHECKPOINT_FORMAT} (format: {found!r}); "
            "such a folder cannot be resumed safely"
        )
    files = document.get("files")
    if not isinstance(files, dict):
        raise DamagedCheckpointError(f"{state_file}: no 'files' list of the checkpoint's files")
    for relative, expected in files.items():
        if not isinstance(expected, dict) or Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise DamagedCheckpointError(f"{state_file}: invalid entry {relative!r} in its list of files")
        path = folder / relative
        if not path.is_file():
            raise DamagedCheckpointError(f"{path}: missing from the checkpoint")
        size = path.stat().st_size
        if size != expected.get("bytes"):
            raise DamagedCheckpointError(
                f"{path}: {size} bytes where {expected.get('bytes')} were written (truncated or altered)"
            )
        if _sha256(path) != expected.get("sha256"):
            raise DamagedCheckpointError(f"{path}: content differs from what was written (SHA-256 mismatch)")
        if path.suffix == ".safetensors":
            _check_safetensors_header(path)
    return VerifiedCheckpoint(folder, document)


def find_resumable_checkpoint(checkpoint_dir: Path, warn: bool = True) -> VerifiedCheckpoint | None:
    """The newest checkpoint under ``checkpoint_dir`` that verifies.

    Damaged newer checkpoints are skipped, with a warning naming each and its problem when ``warn`` (given once an
    intact one is found: when none is, the error alone names them all); ``None`` when there is no checkpoint at all.

    Raises:
        ValueError: when checkpoints exist but none verifies (each is named with its problem).
    """
    candidates = sorted(
        (p for p in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.name[len(CHECKPOINT_PREFIX) :].isdigit()),
        key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]),
        reverse=True,
    ) if checkpoint_dir.is_dir() else []
    problems = []
    for folder in candidates:
        try:
            checkpoint = verify_checkpoint(folder)
        except DamagedCheckpointError as err:
            problems.append((folder, err))
            continue
        for damaged, err in problems if warn else ():
            logger.warning("skipping damaged checkpoint %s: %s", damaged, err)
        return checkpoint
    if problems:
        raise ValueError(f"no usable checkpoint in {checkpoint_dir}: " + "; ".join(str(err) for _, err in problems))
    return None


def resolve_resume_checkpoint(
    resume_from: str | os.PathLike | None, checkpoint_dir: Path
) -> VerifiedCheckpoint | None:
    """The verified checkpoint that a ``resume_from`` setting names.

    ``"latest"``: the newest checkpoint under ``checkpoint_dir`` that verifies (damaged newer ones skipped with a
    warning), ``None`` when there is none yet; a folder: that checkpoint, verified; ``None`` or ``""``: ``None``.

    Raises:
        FileNotFoundError: when the named folder does not exist.
        ValueError: (:class:`DamagedCheckpointError`) when the named checkpoint, or every checkpoint found for
            ``"latest"``, is damaged, naming the file and the problem.
    """
    if not resume_from:
        return None
    if resume_from == "latest":
        found = find_resumable_checkpoint(checkpoint_dir)
        if found is None:
            logger.info("resume_from='latest': no checkpoint in %s, starting from scratch", checkpoint_dir)
        return found
    path = Path(resume_from)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint folder")
    return verify_checkpoint(path)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, with a :class:`DamagedCheckpointError` naming the file if unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise DamagedCheckpointError(f"{path}: not a readable safetensors file ({err})") from None


@contextlib.contextmanager
def weights_only_torch_load(allowed: list[Any] | None = None) -> Iterator[None]:
    """Make every ``torch.load`` of the block refuse arbitrary pickled objects (``weights_only=True`` enforced);
    ``allowed`` are plain data classes it may rebuild besides tensors and Python containers."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(allowed or []):
            yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def deepspeed_state_classes() -> list[Any]:
    """The data classes (no code) that DeepSpeed pickles into its checkpoint files."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _check_safetensors_header(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError, ValueError) as err:
        raise DamagedCheckpointError(f"{path}: not a readable safetensors file ({err})") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
