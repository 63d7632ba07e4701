"""Text features of a frozen text tower, computed once per dataset and kept on disk.

When the whole text tower of an :class:`~cardiomm.ECGTextDualEncoder` is frozen (``freeze_text_layers: -1``, as
in MERL's released code, whose text embedding runs without gradients), the tower's pooled output for a report
never changes during training. :class:`TextFeatureCache` computes it once for every distinct report (the tower in
eval mode, under ``torch.inference_mode``), stores it as safetensors, and hands it to the
:class:`~cardiomm.data.collators.ECGTextFeatureCollator`, which puts it in each batch as ``text_pooler_output``
instead of tokenised reports; the model then runs the text projection on it and never the tower.

The reports are tokenised by the run's processor exactly as :class:`~cardiomm.data.collators.ECGTextCollator`
does (same ``max_text_length``, truncation, tokenizer); they are batched by token length, so a report's feature
equals the one the tower computes inside a training batch up to floating-point rounding (padding changes nothing
else for right-padded tokenizers).

**Where.** ``cardiomm pretrain`` keeps the cache in ``<output_dir>/text_feature_cache`` (a resumed run finds it
there); ``training.text_feature_cache_dir`` names another folder, e.g. one shared by several runs on the same
data. **Which file.** One file ``text_features-<key>.safetensors`` per content key (its first 32 hexadecimal
digits in the name): a SHA-256 over the tokenizer
(its vocabulary and rules), the text tower (its configuration and every tensor of its state dict, in key order),
``text_pooling``, the effective ``max_text_length`` and the set of reports. The same key loads the file; any change
of weights, tokenizer, pooling, length or reports gives a new key (and a new file). **Format.** ``features``
(reports, hidden) float32; ``text_sha256`` (reports, 32) uint8, the SHA-256 of each row's report (rows are sorted
by it); the metadata holds the key and what it was made of. The file is written to a temporary name and renamed
(``os.replace``), so an interrupted run never leaves a partial cache. **Damage.** A cache file that does not read
back (truncated, not safetensors, rows that do not match the reports, non-finite values) is reported with a
warning naming the file and the problem, and rebuilt in its place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

CACHE_FORMAT = "cardiomm-text-features/1"
CACHE_FOLDER = "text_feature_cache"
FILE_PREFIX = "text_features-"

# tokenizer arguments that say where it was loaded from, or call-time defaults that the calls here override
_TOKENIZER_PLACE_KEYS = {"name_or_path", "is_local", "local_files_only", "cache_dir", "revision", "token",
                         "trust_remote_code", "_from_auto", "_commit_hash", "added_tokens_decoder", "max_length",
                         "stride", "truncation_strategy", "pad_to_multiple_of"}
# configuration fields that do not change the tower's eval-mode output
_CONFIG_BOOKKEEPING_KEYS = {"_name_or_path", "name_or_path", "transformers_version", "architectures", "dtype",
                            "torch_dtype", "_attn_implementation", "_attn_implementation_autoset",
                            "attn_implementation", "output_hidden_states", "output_attentions", "return_dict",
                            "use_cache", "chunk_size_feed_forward", "id2label", "label2id", "problem_type",
                            "tokenizer_class", "prefix", "task_specific_params", "_experts_implementation"}


def report_texts(values: Iterable[Any]) -> list[str]:
    """Reports as the collators read them from a dataset column (``None`` becomes ``""``)."""
    return [str(value or "") for value in values]


def _sha256_json(document: Any) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of what a tokenizer does: for a ``tokenizers``-backed one its full pipeline (normaliser,
    pre-tokeniser, vocabulary, post-processor, added tokens) without the truncation/padding state of its last call;
    otherwise its vocabulary and construction arguments (file paths left out). Truncation and padding sides and
    the special tokens are included either way; where the tokenizer was loaded from is not."""
    document: dict[str, Any] = {
        "class": type(tokenizer).__name__,
        "truncation_side": getattr(tokenizer, "truncation_side", None),
        "padding_side": getattr(tokenizer, "padding_side", None),
        "special_tokens": {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())},
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        pipeline = json.loads(backend.to_str())
        pipeline.pop("truncation", None)
        pipeline.pop("padding", None)
        document["backend"] = pipeline
    else:
        document["vocab"] = sorted(tokenizer.get_vocab().items())
        document["init_kwargs"] = {
            k: str(v) for k, v in sorted(getattr(tokenizer, "init_kwargs", {}).items())
            if k not in _TOKENIZER_PLACE_KEYS and not k.endswith("_file")
        }
    return _sha256_json(document)


def tower_fingerprint(tower: torch.nn.Module) -> str:
    """SHA-256 of a tower's configuration (bookkeeping fields left out) and of every tensor of its state dict,
    in key order: name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    config = getattr(tower, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        fields = {k: v for k, v in config.to_dict().items() if k not in _CONFIG_BOOKKEEPING_KEYS}
        digest.update(_sha256_json(fields).encode("ascii"))
    for name, tensor in tower.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def effective_max_text_length(processor: Any) -> int:
    """The truncation length the processor's tokenisation uses: ``max_text_length`` capped by the tokenizer's
    ``model_max_length``."""
    limit = int(processor.max_text_length)
    model_max_length = getattr(processor.tokenizer, "model_max_length", None)
    if isinstance(model_max_length, int) and model_max_length > 0:
        limit = min(limit, model_max_length)
    return limit


def _distinct_sorted(texts: Iterable[str]) -> tuple[list[str], np.ndarray]:
    """The distinct reports sorted by their SHA-256, and the digests as a (reports, 32) uint8 array."""
    by_digest = {hashlib.sha256(t.encode("utf-8")).digest(): t for t in dict.fromkeys(texts)}
    digests = sorted(by_digest)
    array = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 32)
    return [by_digest[d] for d in digests], array


def text_feature_cache_key(model: Any, processor: Any, texts: Iterable[str]) -> str:
    """The content key of the cache of ``model``'s text features for ``texts`` (see the module docstring)."""
    _, digests = _distinct_sorted(report_texts(texts))
    return _sha256_json(_key_document(model, processor, digests))


def _key_document(model: Any, processor: Any, digests: np.ndarray) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "tokenizer": tokenizer_fingerprint(processor.tokenizer),
        "text_tower": tower_fingerprint(model.tower("text")),
        "text_pooling": model.config.text_pooling,
        "max_text_length": effective_max_text_length(processor),
        "reports": hashlib.sha256(digests.tobytes()).hexdigest(),
        "num_reports": int(len(digests)),
    }


def default_cache_dir(output_dir: str | os.PathLike) -> Path:
    """``<output_dir>/text_feature_cache``, the folder ``cardiomm pretrain`` uses unless
    ``training.text_feature_cache_dir`` names another."""
    return Path(output_dir) / CACHE_FOLDER


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


class TextFeatureCache:
    """The pooled outputs of a frozen text tower (what ``config.text_pooling`` selects, before the text projection)
    for a set of reports, looked up by report text.

    Build it with :meth:`build` (loads the cache file of the same key, or computes and writes it).

    Args:
        texts: the distinct reports, row ``i`` of ``features`` belonging to ``texts[i]``.
        features: (reports, hidden) float32.
        path: the cache file, if any.
        key: the content key (see the module docstring).
        computed: whether :meth:`build` computed the features (``False``: read from ``path``).
    """

    def __init__(self, texts: Sequence[str], features: torch.Tensor, path: Path | None = None,
                 key: str | None = None, computed: bool = False) -> None:
        if features.ndim != 2 or features.shape[0] != len(texts):
            raise ValueError(f"features must be (reports, hidden) with one row per report; got {tuple(features.shape)}"
                             f" for {len(texts)} reports")
        self.texts = list(texts)
        self.features = features
        self.path = path
        self.key = key
        self.computed = computed
        self._rows = {text: i for i, text in enumerate(self.texts)}

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def hidden_size(self) -> int:
        """The width of the text features."""
        return int(self.features.shape[1])

    def __contains__(self, text: object) -> bool:
        return text in self._rows

    def lookup(self, texts: Sequence[str]) -> torch.Tensor:
        """The features of ``texts`` (reports as :func:`report_texts` reads them), shape (len(texts), hidden).

        Raises:
            ValueError: naming the cache file, for a report the cache does not hold.
        """
        try:
            rows = [self._rows[text] for text in texts]
        except KeyError as err:
            where = self.path or "the text feature cache"
            raise ValueError(f"{where}: no text feature for the report {str(err.args[0])[:80]!r}; the cache holds "
                             "the reports of the splits it was built from") from None
        return self.features[torch.as_tensor(rows, dtype=torch.long)]

    # ------------------------------------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        model: Any,
        processor: Any,
        texts: Iterable[str],
        cache_dir: str | os.PathLike,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        progress: bool = True,
    ) -> TextFeatureCache:
        """The text features of ``model``'s frozen text tower for every distinct report of ``texts``, read from
        ``cache_dir`` when a cache of the same key is there, else computed and written there.

        Args:
            model: an :class:`~cardiomm.ECGTextDualEncoder` (any model with ``tower("text")``,
                ``encode_partner("text", inputs)`` and ``config.text_pooling``).
            processor: the run's :class:`~cardiomm.ECGTextProcessor` (its tokenizer and ``max_text_length``).
            texts: the reports (a dataset column; duplicates and order do not matter).
            cache_dir: the folder of the cache files (created when missing).
            batch_size: reports per tower call while computing.
            device: where the tower runs while computing (default: the GPU of this process when there is one,
                else the CPU); it is moved back afterwards.
            progress: show a progress bar while computing.
        """
        distinct, digests = _distinct_sorted(report_texts(texts))
        document = _key_document(model, processor, digests)
        key = _sha256_json(document)
        path = Path(cache_dir) / f"{FILE_PREFIX}{key[:32]}.safetensors"
        if path.is_file():
            try:
                return cls._read(path, distinct, digests, key)
            except ValueError as err:
                logger.warning("rebuilding the damaged text feature cache %s: %s", path, err)
        features = compute_text_features(model, processor, distinct, batch_size=batch_size, device=device,
                                         progress=progress)
        _write(path, features, digests, document, key)
        return cls(distinct, features, path=path, key=key, computed=True)

    @classmethod
    def _read(cls, path: Path, texts: list[str], digests: np.ndarray, key: str) -> TextFeatureCache:
        """The cache file ``path`` checked against the expected key and reports.

        Raises:
            ValueError: what is wrong with the file (not readable, another key, rows that differ).
        """
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                names = set(handle.keys())
                if not {"features", "text_sha256"} <= names:
                    raise ValueError(f"tensors {sorted(names)}, expected 'features' and 'text_sha256'")
                features = handle.get_tensor("features")
                stored_digests = handle.get_tensor("text_sha256")
        except ValueError:
            raise
        except Exception as err:  # safetensors raises its own error types for damaged files
            raise ValueError(f"not a readable safetensors file ({type(err).__name__}: {err})") from None
        if metadata.get("format") != CACHE_FORMAT or metadata.get("key") != key:
            raise ValueError(f"its metadata names format {metadata.get('format')!r} and key {metadata.get('key')!r}, "
                             f"expected {CACHE_FORMAT!r} and {key!r}")
        if features.dtype != torch.float32 or features.ndim != 2 or features.shape[0] != len(texts):
            raise ValueError(f"'features' is {features.dtype} {tuple(features.shape)}, expected float32 "
                             f"({len(texts)}, hidden)")
        if not np.array_equal(stored_digests.numpy(), digests):
            raise ValueError("its rows belong to other reports than the dataset's")
        if not torch.isfinite(features).all():
            raise ValueError("'features' holds non-finite values")
        return cls(texts, features, path=path, key=key, computed=False)


def compute_text_features(
    model: Any,
    processor: Any,
    texts: Sequence[str],
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """The pooled text-tower output (``model.encode_partner("text", ...)[0]``) of each of ``texts``, as float32
    (len(texts), hidden) on the CPU, the tower in eval mode under ``torch.inference_mode``.

    Reports are tokenised by ``processor`` as the training collator does, and batched by token length (shortest
    first) so that each batch carries little padding.
    """
    from tqdm.auto import tqdm

    tower = model.tower("text")
    if not texts:
        return torch.empty(0, model.config.text_config.hidden_size, dtype=torch.float32)
    original_device = next(tower.parameters()).device
    device = torch.device(device) if device is not None else _default_device()
    was_training = tower.training
    # token lengths first (no padding), to batch similar lengths together
    lengths = [len(ids) for ids in processor(text=list(texts), padding=False, return_tensors=None)["input_ids"]]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    features: torch.Tensor | None = None
    tower.to(device).eval()
    try:
        with torch.inference_mode(), tqdm(total=len(texts), desc="text features", unit="report",
                                          disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                inputs = processor(text=[texts[i] for i in rows], padding="longest", return_tensors="pt")
                inputs = {k: v.to(device) for k, v in inputs.items()}
                pooled = model.encode_partner("text", inputs)[0].float().cpu()
                if features is None:
                    features = torch.empty(len(texts), pooled.shape[1], dtype=torch.float32)
                features[torch.as_tensor(rows)] = pooled
                bar.update(len(rows))
    finally:
        tower.to(original_device)
        tower.train(was_training)
        if hasattr(model, "lock"):
            model.lock()  # a locked tower stays in eval mode
    assert features is not None
    return features.clone()  # a normal tensor (not an inference tensor) for autograd later


def _write(path: Path, features: torch.Tensor, digests: np.ndarray, document: dict[str, Any], key: str) -> None:
    """Write the cache file atomically: a temporary file in the same folder, then ``os.replace``."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": CACHE_FORMAT, "key": key, **{k: str(v) for k, v in document.items() if k != "format"}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({"features": features.contiguous(), "text_sha256": torch.from_numpy(digests.copy())}, str(tmp),
                  metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


__all__ = [
    "CACHE_FOLDER",
    "TextFeatureCache",
    "compute_text_features",
    "default_cache_dir",
    "effective_max_text_length",
    "report_texts",
    "text_feature_cache_key",
    "tokenizer_fingerprint",
    "tower_fingerprint",
]
