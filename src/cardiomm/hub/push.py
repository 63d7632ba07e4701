"""Uploading a saved checkpoint to the Hub: an allow-list of files, listed before anything is sent.

What is uploaded (everything else in the folder stays local and is listed as left out):

- weights in safetensors format (``*.safetensors`` and their ``*.safetensors.index.json``). Pickle files
  (``pytorch_model.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``, ``*.pkl``) are never uploaded: loading a pickle runs
  code, and every cardiomm checkpoint is saved as safetensors (re-save an old one with ``save_pretrained``);
- ``config.json`` / ``adapter_config.json``, the processor, feature-extractor and tokenizer files;
- the Python files ``trust_remote_code`` loading imports: the modules named in ``auto_map``, the pipeline
  modules named in ``config.json``'s ``custom_pipelines``, and the sibling modules they import
  (:func:`cardiomm.hub.remote_code.remote_code_files`);
- the model card ``README.md``;
- ``training_config.yaml`` with local paths removed: every absolute path (``/home/...``, ``/tmp/...``,
  ``C:\\...``) and home-relative path (``~/...``) inside its values becomes ``<local>/`` followed by the path's
  last component (``/home/alice/data/synth`` → ``<local>/synth``); relative paths are kept.

A new repository is PUBLIC unless ``private=True``; an existing repository keeps its visibility, and asking
for a private upload to an existing public repository is refused before anything is sent.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ..processing.processing_ecg_sehr import CODE_TOKENIZER_FOLDER
from ..processing.tokenization_medical_codes import VOCAB_FILES_NAMES as MEDICAL_CODE_VOCAB_FILES
from .remote_code import CUSTOM_PIPELINES_SOURCE, remote_code_files

SAFETENSORS_PATTERNS: tuple[str, ...] = ("*.safetensors", "*.safetensors.index.json")
PICKLE_PATTERNS: tuple[str, ...] = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
CONFIG_FILES: tuple[str, ...] = ("config.json", "adapter_config.json")
PREPROCESSOR_FILES: tuple[str, ...] = ("preprocessor_config.json", "processor_config.json", "tokenizer_config.json")
TOKENIZER_FILES: tuple[str, ...] = tuple(dict.fromkeys((
    "tokenizer.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    *MEDICAL_CODE_VOCAB_FILES.values(),  # MedicalCodeTokenizer
)))
# folders a processor saves its second tokenizer in (ECGSEHRProcessor / SEHRECGTextProcessor: the code tokenizer)
PROCESSOR_SUBFOLDERS: tuple[str, ...] = (CODE_TOKENIZER_FOLDER,)
MODEL_CARD = "README.md"
TRAINING_CONFIG = "training_config.yaml"
LOCAL_PATH_PLACEHOLDER = "<local>"

# an absolute POSIX path, a home-relative path or a Windows drive path, not inside a URL or a relative path
_LOCAL_PATH = re.compile(r"""(?<![\w.:/~\\>-])(?:~[\w.-]*/|/(?=[^\s'"=,;/])|[A-Za-z]:[\\/])[^\s'"=,;]*""")


@dataclass
class UploadFile:
    """One file of an upload: its name in the repository, size in bytes, and the bytes to send when they
    differ from the file on disk (the training config with local paths removed)."""

    path_in_repo: str
    size: int
    source: Path
    content: bytes | None = None
    note: str = ""


@dataclass
class UploadPlan:
    """What :func:`push_checkpoint` sends from ``folder`` (``files``) and what stays local (``left_out``:
    ``(name, reason)``)."""

    folder: Path
    files: list[UploadFile] = field(default_factory=list)
    left_out: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total_size(self) -> int:
        """Bytes to upload."""
        return sum(f.size for f in self.files)

    def describe(self, repo_id: str, private: bool) -> str:
        """The listing printed before an upload: visibility, files with sizes, files left out."""
        if private:
            visibility = f"{repo_id} will be a PRIVATE repository (an existing repository keeps its visibility)"
        else:
            visibility = (f"{repo_id} will be PUBLIC: anyone can see and download these files "
                          "(pass --private for a private repository; an existing repository keeps its visibility)")
        width = max(len(f.path_in_repo) for f in self.files)
        lines = [visibility, f"files to upload from {self.folder} ({len(self.files)}, {format_size(self.total_size)}):"]
        for f in self.files:
            note = f"  ({f.note})" if f.note else ""
            lines.append(f"  {f.path_in_repo.ljust(width)}  {format_size(f.size).rjust(9)}{note}")
        if self.left_out:
            lines.append(f"left out, not uploaded ({len(self.left_out)}):")
            width = max(len(name) for name, _ in self.left_out)
            lines += [f"  {name.ljust(width)}  {reason}" for name, reason in self.left_out]
        return "\n".join(lines)


@dataclass
class PushResult:
    """A finished upload: the commit URL, the repository's visibility and the uploaded file names."""

    commit_url: str
    private: bool
    files: list[str]


def format_size(num_bytes: int) -> str:
    """``1234567`` → ``"1.2 MB"`` (decimal units)."""
    if num_bytes < 1000:
        return f"{num_bytes} B"
    size = num_bytes / 1000
    for unit in ("kB", "MB"):
        if size < 1000:
            return f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _path_name(path: str) -> str:
    windows = re.match(r"[A-Za-z]:[\\/]", path) is not None
    return (PureWindowsPath(path) if windows else PurePosixPath(path.rstrip("/"))).name


def redact_local_paths(value: Any) -> tuple[Any, int]:
    """``value`` (YAML data: dicts, lists, strings) with every absolute or home-relative path in its strings
    replaced by ``<local>/<last component>``; returns the new value and the number of paths replaced."""
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        name = _path_name(match.group(0))
        return f"{LOCAL_PATH_PLACEHOLDER}/{name}" if name else LOCAL_PATH_PLACEHOLDER

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            return _LOCAL_PATH.sub(replace, item)
        if isinstance(item, dict):
            return {walk(k): walk(v) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        return item

    return walk(value), count


def redacted_training_config(path: str | os.PathLike) -> tuple[bytes, int]:
    """The YAML of ``training_config.yaml`` with local paths removed (:func:`redact_local_paths`), and the
    number of paths replaced."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from err
    clean, count = redact_local_paths(data)
    return yaml.safe_dump(clean, sort_keys=False, allow_unicode=True).encode("utf-8"), count


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def check_checkpoint(folder: str | os.PathLike) -> list[str]:
    """Return the problems that would make ``folder`` a broken Hub checkpoint (empty list: ready to push).

    A cardiomm checkpoint needs its config, safetensors weights, preprocessor, a model card, and every Python
    file that ``trust_remote_code`` loading imports (the ``auto_map`` modules and their sibling imports).
    """
    root = Path(folder)
    if not root.is_dir():
        return [f"{root}: not a folder"]
    names = {p.name for p in root.iterdir() if p.is_file()}
    problems = []
    if not names & set(CONFIG_FILES):
        problems.append("config.json is missing")
    if not any(_matches(n, SAFETENSORS_PATTERNS) for n in names):
        pickles = sorted(n for n in names if _matches(n, PICKLE_PATTERNS))
        hint = (f" ({', '.join(pickles)} is pickle, which is never uploaded because loading it runs code; "
                "re-save the model with save_pretrained to get model.safetensors)") if pickles else ""
        problems.append(f"no safetensors weights file (*.safetensors){hint}")
    if not names & set(PREPROCESSOR_FILES):
        problems.append("no preprocessor (feature extractor / processor / tokenizer config)")
    if MODEL_CARD not in names:
        problems.append("README.md (model card) is missing")
    for file_name, source in remote_code_files(root).missing:
        if source.endswith(".py"):
            problems.append(f"{source} imports {file_name}, which is missing")
        else:
            named_by = source if source == CUSTOM_PIPELINES_SOURCE else f"{source} auto_map"
            problems.append(f"{named_by} needs {file_name}, which is missing")
    return problems


def plan_upload(folder: str | os.PathLike) -> UploadPlan:
    """The allow-listed files of a checkpoint folder (see the module docstring) and what is left out.

    Raises ``ValueError`` naming the folder and its problems when it is not a complete checkpoint
    (:func:`check_checkpoint`).
    """
    root = Path(folder)
    problems = check_checkpoint(root)
    if problems:
        raise ValueError(f"{root}: not a complete checkpoint: " + "; ".join(problems))
    code = set(remote_code_files(root).files)
    allowed = set(CONFIG_FILES) | set(PREPROCESSOR_FILES) | set(TOKENIZER_FILES) | {MODEL_CARD}
    plan = UploadPlan(folder=root)
    for path in sorted(root.iterdir(), key=lambda p: p.name):
        name = path.name
        if path.is_dir() and name in PROCESSOR_SUBFOLDERS:
            for inner in sorted(path.iterdir(), key=lambda p: p.name):
                inner_name = f"{name}/{inner.name}"
                if inner.is_file() and inner.name in set(PREPROCESSOR_FILES) | set(TOKENIZER_FILES):
                    plan.files.append(UploadFile(inner_name, inner.stat().st_size, inner))
                else:
                    plan.left_out.append((inner_name, "not a tokenizer file"))
        elif path.is_dir():
            plan.left_out.append((f"{name}/", "folder (training state, logs): not part of a checkpoint"))
        elif not path.is_file():
            plan.left_out.append((name, "not a regular file"))
        elif name == TRAINING_CONFIG:
            content, count = redacted_training_config(path)
            note = f"{count} local path{'s' if count != 1 else ''} replaced by {LOCAL_PATH_PLACEHOLDER}/NAME"
            plan.files.append(UploadFile(name, len(content), path, content, note if count else ""))
        elif name in allowed or name in code or _matches(name, SAFETENSORS_PATTERNS):
            plan.files.append(UploadFile(name, path.stat().st_size, path))
        elif _matches(name, PICKLE_PATTERNS):
            plan.left_out.append((name, "pickle file: never uploaded (loading it runs code)"))
        elif name.endswith(".py"):
            plan.left_out.append((name, "Python file that the checkpoint's auto_map does not use"))
        else:
            plan.left_out.append((name, "not a checkpoint file"))
    return plan


def push_checkpoint(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload cardiomm checkpoint",
    api: Any = None,
    plan: UploadPlan | None = None,
) -> PushResult:
    """Create ``repo_id`` if needed and upload the allow-listed files of ``folder`` in one commit.

    ``plan`` (default :func:`plan_upload` of ``folder``) is exactly what is sent; an incomplete folder raises
    ``ValueError`` before any Hub call. A new repository is public unless ``private``; asking for ``private``
    when ``repo_id`` already exists as a public repository raises ``ValueError`` and uploads nothing.
    ``api`` defaults to ``huggingface_hub.HfApi(token=token)``.
    """
    from huggingface_hub import CommitOperationAdd

    plan = plan if plan is not None else plan_upload(folder)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    is_private = bool(getattr(api.repo_info(repo_id=repo_id, repo_type="model"), "private", False))
    if private and not is_private:
        raise ValueError(
            f"{repo_id} already exists and is PUBLIC; --private does not change an existing repository. "
            "Nothing was uploaded: make the repository private on the Hub first, or choose another name."
        )
    operations = [
        CommitOperationAdd(path_in_repo=f.path_in_repo,
                           path_or_fileobj=f.content if f.content is not None else str(f.source))
        for f in plan.files
    ]
    info = api.create_commit(repo_id=repo_id, repo_type="model", operations=operations,
                             commit_message=commit_message)
    return PushResult(commit_url=str(getattr(info, "commit_url", info)), private=is_private,
                      files=[f.path_in_repo for f in plan.files])
