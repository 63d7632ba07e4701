"""Order and randomness of the training data, as functions of ``(seed, epoch, sample)`` only.

A run must replay exactly after a resume, whatever the number of DataLoader workers: the shuffling order of an
epoch comes from ``(seed, epoch)``; every random draw made while a sample is read or a batch is collated (random
crops, MLM masks, ...) comes from a generator seeded with ``(seed, epoch, sample index)``; and the training step
reseeds the process-wide generators (dropout) from ``(seed, epoch, batch position)``. Nothing depends on which
worker process handled a batch, or on how many batches a process has drawn before.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

_SEED_MODULUS = 2**63 - 1


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A seed derived from ``(seed, epoch, stream)``; distinct streams give independent generators."""
    return (seed * 1_000_003 + epoch * 10_007 + stream * 101) % _SEED_MODULUS


def sample_seed(seed: int, epoch: int, index: int, stream: int = 0) -> int:
    """A seed derived from ``(seed, epoch, sample index, stream)`` (a 64-bit mix: neighbours are unrelated)."""
    value = np.random.SeedSequence([seed % 2**63, epoch, index, stream]).generate_state(2, np.uint32)
    return int((int(value[0]) << 31) ^ int(value[1])) % _SEED_MODULUS


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and PyTorch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block with Python's, NumPy's and PyTorch's CPU generators seeded with ``seed``, restoring them after."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class EpochShuffleSampler(Sampler[int]):
    """Random permutation of ``range(num_samples)`` that depends only on ``(seed, epoch)``.

    Every process draws the same permutation (Accelerate then gives each process its share of the batches), and a
    resumed run replays exactly the order of the interrupted epoch.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        yield from torch.randperm(self.num_samples, generator=generator).tolist()

    def __len__(self) -> int:
        return self.num_samples


def _stable_repr(key: Any) -> str:
    """A representation of a sampler group key that is the same in every process (sets sorted)."""
    if isinstance(key, (set, frozenset)):
        return repr(sorted(map(repr, key)))
    return repr(key)


class ModalityGroupedBatchSampler(Sampler[list[int]]):
    """Batches of patients grouped by the modalities they have, as CLERC trains: each patient once per epoch;
    patients with the same set of modalities fill batches together (so that every pair of modalities in a batch
    is present for all of its patients); the patients left over by every group are shuffled and batched
    together; the batches are then shuffled. The whole order depends only on ``(seed, epoch)``.

    Args:
        modality_sets: the modalities of each patient (any hashable: a frozenset of names, a tuple of flags).
        batch_size: patients per batch.
        drop_last: drop the last, incomplete batch of the left-over patients (the groups give full batches only).
        seed: the run's seed.
        shuffle: shuffle (training); ``False`` keeps the patients in order within each group and the batches in
            group order (evaluation: the same batches every time).
    """

    def __init__(self, modality_sets: Sequence[Any], batch_size: int, drop_last: bool = False, seed: int = 0,
                 shuffle: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.modality_sets = list(modality_sets)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        groups: dict[Any, list[int]] = {}
        for index, key in enumerate(self.modality_sets):
            groups.setdefault(key, []).append(index)
        # the group order must not depend on string hashing (it differs between processes: a resumed run, the
        # processes of a distributed one), so sets are ordered by their sorted members
        self._groups = [groups[key] for key in sorted(groups, key=lambda k: (-len(groups[k]), _stable_repr(k)))]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """The batches of the current epoch."""
        rng = np.random.default_rng(epoch_seed(self.seed, self.epoch, stream=3))
        batches: list[list[int]] = []
        left_over: list[int] = []
        for members in self._groups:
            order = rng.permutation(members).tolist() if self.shuffle else list(members)
            full = len(order) // self.batch_size * self.batch_size
            batches += [order[i : i + self.batch_size] for i in range(0, full, self.batch_size)]
            left_over += order[full:]
        if self.shuffle:
            left_over = rng.permutation(left_over).tolist()
        tail = [left_over[i : i + self.batch_size] for i in range(0, len(left_over), self.batch_size)]
        if tail and self.drop_last and len(tail[-1]) < self.batch_size:
            tail.pop()
        batches += tail
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()

    def __len__(self) -> int:
        full = sum(len(m) // self.batch_size for m in self._groups)
        rest = sum(len(m) % self.batch_size for m in self._groups)
        tail = rest // self.batch_size if self.drop_last else -(-rest // self.batch_size)
        return full + tail


class SampleKey(NamedTuple):
    """What the training sampler yields: the epoch and the index of one sample."""

    epoch: int
    index: int


class KeyedSampler(Sampler[SampleKey]):
    """Yields ``SampleKey(epoch, index)`` for each index of ``sampler`` (which has ``epoch`` / ``set_epoch``), so
    that the worker reading a sample knows which random draws belong to it."""

    def __init__(self, sampler: EpochShuffleSampler) -> None:
        self.sampler = sampler

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[SampleKey]:
        epoch = self.sampler.epoch
        for index in self.sampler:
            yield SampleKey(epoch, int(index))

    def __len__(self) -> int:
        return len(self.sampler)


class KeyedBatchSampler(Sampler[list[SampleKey]]):
    """Yields each batch of ``batch_sampler`` (lists of indices, with ``epoch`` / ``set_epoch``, e.g.
    :class:`ModalityGroupedBatchSampler`) as a list of ``SampleKey(epoch, index)``."""

    def __init__(self, batch_sampler: Any) -> None:
        self.batch_sampler = batch_sampler

    @property
    def epoch(self) -> int:
        return self.batch_sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        epoch = self.batch_sampler.epoch
        for batch in self.batch_sampler:
            yield [SampleKey(epoch, int(index)) for index in batch]

    def __len__(self) -> int:
        return len(self.batch_sampler)


class SeededSamples(Dataset):
    """A map-style dataset read by :class:`SampleKey` (or plain index, epoch 0): ``dataset[index]`` is read with the
    random generators seeded from ``(seed, epoch, index)`` and returned as ``(key, item)``, for
    :class:`SeededCollator`."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey | int) -> tuple[SampleKey, Any]:
        key = key if isinstance(key, SampleKey) else SampleKey(0, int(key))
        with seeded_rng(sample_seed(self.seed, key.epoch, key.index, stream=1)):
            return key, self.dataset[key.index]

    def __getitems__(self, keys: Sequence[SampleKey | int]) -> list[tuple[SampleKey, Any]]:
        keys = [k if isinstance(k, SampleKey) else SampleKey(0, int(k)) for k in keys]
        fetch_batch = getattr(self.dataset, "__getitems__", None)
        if fetch_batch is None or not keys:
            return [self[k] for k in keys]
        # one read of the whole batch (Arrow-backed datasets): seeded by the batch's first sample
        with seeded_rng(sample_seed(self.seed, keys[0].epoch, keys[0].index, stream=1)):
            items = fetch_batch([k.index for k in keys])
        return list(zip(keys, items))


class SeededCollator:
    """Collates the ``(key, item)`` pairs of :class:`SeededSamples` with ``collate_fn`` (PyTorch's default when
    ``None``), its random draws seeded from ``(seed, epoch, index of the batch's first sample)``: the same batch
    gets the same crops and masks in every worker, every run and after every resume.

    ``collate_fn`` must draw from the process-wide generators (``torch``, ``numpy.random``, ``random``), as the
    cardiomm collators do with their default ``seed=None``; a generator of its own would advance differently in
    each worker process.
    """

    def __init__(self, collate_fn: Callable[[list[Any]], Any] | None, seed: int) -> None:
        self.collate_fn = collate_fn if collate_fn is not None else default_collate
        self.seed = seed

    def __call__(self, pairs: Sequence[tuple[SampleKey, Any]]) -> Any:
        keys = [key for key, _ in pairs]
        items = [item for _, item in pairs]
        first = keys[0] if keys else SampleKey(0, 0)
        with seeded_rng(sample_seed(self.seed, first.epoch, first.index, stream=2)):
            return self.collate_fn(items)
