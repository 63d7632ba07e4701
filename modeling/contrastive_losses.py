"""Contrastive objectives shared by the cardiomm models, distributed-aware.

Every loss gathers the features of all processes (with gradients, through
:func:`torch.distributed.nn.functional.all_gather`) and compares the *local* rows with the *global* batch, as
open_clip does with ``local_loss=True``. On process ``r`` of ``W`` with a local batch of ``B`` the loss value is
the loss of the local anchors only; its mean over processes equals the loss of one process on the concatenated
batch, and after the data-parallel gradient average (DDP, DeepSpeed) the parameter gradients equal those of that
single process. All processes must hold batches of the same size (``drop_last`` in training). Outside
``torch.distributed`` (or with one process) every function is the plain single-batch loss.

The similarity matrix is built once: a model L2-normalises its embeddings, :func:`contrastive_logits` scales
their similarities (gathering the partner embeddings when distributed), and the losses take those logits
(:func:`clip_loss`, :func:`convirt_loss`, as transformers' ``clip_loss(similarity)``); the model's output logits
are their local block (:func:`local_logits`), not a second product.

References: CLIP (Radford et al. 2021); ConVIRT (Zhang et al. 2020), as used for ECG–sEHR and ECG–text by
Lalam et al.; MERL uni-modal alignment (Liu et al. 2024); multi-positive contrastive loss for "good views" of
ECGs (Jeong et al.) and SupCon (Khosla et al. 2020).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "gather_features",
    "contrastive_logits",
    "local_logits",
    "clip_loss",
    "convirt_loss",
    "paired_contrastive_loss",
    "embedding_clip_loss",
    "unimodal_alignment_loss",
    "multi_positive_contrastive_loss",
    "multimodal_clip_loss",
]

# labels of the local anchors in the gathered batch, keyed by (device, local batch size, rank) as in open_clip
_LABELS_CACHE: dict[tuple[str, int, int], Tensor] = {}


def _world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` outside ``torch.distributed``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_features(features: Tensor) -> Tensor:
    """All-gather ``features`` (``(B, ...)``) from every process into ``(world_size * B, ...)``, keeping gradients.

    The result is ordered by rank, so the local features sit at rows ``rank * B:(rank + 1) * B``. The backward
    pass sums the gradients of every process into the local slice. Identity without ``torch.distributed`` or
    with a single process.
    """
    _, world_size = _world()
    if world_size == 1:
        return features
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(features), dim=0)


def _local_labels(batch_size: int, device: torch.device, rank: int) -> Tensor:
    key = (str(device), batch_size, rank)
    labels = _LABELS_CACHE.get(key)
    if labels is None:
        labels = torch.arange(batch_size, device=device) + rank * batch_size
        if len(_LABELS_CACHE) > 64:
            _LABELS_CACHE.clear()
        _LABELS_CACHE[key] = labels
    return labels


def contrastive_logits(
    a_embeds: Tensor, b_embeds: Tensor, logit_scale: Tensor | float, gather: bool = True
) -> tuple[Tensor, Tensor]:
    """Scaled cosine similarities of paired, L2-normalised embeddings, built once for the loss and the outputs.

    Returns ``(logits_per_a, logits_per_b)``: the local ``a`` rows against every ``b`` of the (gathered) batch and
    the local ``b`` rows against every ``a``, each ``(B, world_size * B)``. With one process ``logits_per_b`` is
    the transpose of ``logits_per_a`` (``(B, B)``); when distributed, the local block of either is
    :func:`local_logits`. Row ``i``'s positive is column ``rank * B + i``.

    Args:
        a_embeds, b_embeds: ``(B, D)`` embeddings, already L2-normalised (row ``i`` of each is a positive pair).
        logit_scale: multiplier of the similarities, ``1 / temperature`` (e.g. ``model.logit_scale.exp()``).
        gather: compare with the embeddings of every process when running distributed (gradients flow back
            through the gather).
    """
    if a_embeds.shape[0] != b_embeds.shape[0]:
        raise ValueError(f"paired features need the same batch size, got {a_embeds.shape[0]} and {b_embeds.shape[0]}")
    _, world_size = _world() if gather else (0, 1)
    if world_size == 1:  # one batch: the b→a logits are the transpose of the a→b ones
        logits_per_a = logit_scale * a_embeds @ b_embeds.T
        return logits_per_a, logits_per_a.T
    logits_per_a = logit_scale * a_embeds @ gather_features(b_embeds).T
    logits_per_b = logit_scale * b_embeds @ gather_features(a_embeds).T
    return logits_per_a, logits_per_b


def local_logits(logits: Tensor) -> Tensor:
    """The ``(B, B)`` block of this process's own pairs in ``(B, world_size * B)`` logits of
    :func:`contrastive_logits` (the logits themselves with one process)."""
    batch_size = logits.shape[0]
    if logits.shape[1] == batch_size:
        return logits
    rank, _ = _world()
    return logits[:, rank * batch_size:(rank + 1) * batch_size]


def _labels_of(logits: Tensor) -> Tensor:
    """Column of each row's positive: ``rank * B + i`` for gathered logits, ``i`` for local ones."""
    batch_size = logits.shape[0]
    rank = _world()[0] if logits.shape[1] != batch_size else 0
    return _local_labels(batch_size, logits.device, rank)


def clip_loss(logits_per_a: Tensor, logits_per_b: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE (CLIP) loss ``(CE(a→b) + CE(b→a)) / 2`` from the logits of :func:`contrastive_logits`.

    Args:
        logits_per_a: ``(B, world_size * B)`` scaled similarities of the local ``a`` rows against every ``b``.
        logits_per_b: the same for the local ``b`` rows; defaults to ``logits_per_a.T`` (one process), as
            transformers' ``clip_loss(similarity)``.

    Returns:
        The loss, averaged over the local anchors.
    """
    if logits_per_b is None:
        logits_per_b = logits_per_a.T
    labels = _labels_of(logits_per_a)
    return 0.5 * (F.cross_entropy(logits_per_a, labels) + F.cross_entropy(logits_per_b, labels))


def convirt_loss(logits_per_a: Tensor, logits_per_b: Tensor | None = None, lambda_: float = 0.75) -> Tensor:
    """ConVIRT bidirectional contrastive loss ``λ·ℓ(a→b) + (1−λ)·ℓ(b→a)`` from the logits of
    :func:`contrastive_logits` (built at ``logit_scale = 1 / τ``).

    ``ℓ(a→b)`` takes each ``a_i`` as anchor and classifies its partner ``b_i`` among all ``b``; ``ℓ(b→a)`` is the
    reverse. This is Eq. (1)–(2) of Lalam et al. with ``a`` the ECG embedding and ``b`` the sEHR (or text)
    embedding; that paper sets ``λ = 0.5`` and ``τ = 0.1``, ConVIRT's default for image→text is ``λ = 0.75``.

    Args:
        logits_per_a, logits_per_b: as in :func:`clip_loss`.
        lambda_: weight ``λ ∈ [0, 1]`` of the ``a→b`` direction.
    """
    if not 0.0 <= lambda_ <= 1.0:
        raise ValueError(f"lambda_ must lie in [0, 1], got {lambda_}")
    if logits_per_b is None:
        logits_per_b = logits_per_a.T
    labels = _labels_of(logits_per_a)
    return lambda_ * F.cross_entropy(logits_per_a, labels) + (1.0 - lambda_) * F.cross_entropy(logits_per_b, labels)


def paired_contrastive_loss(
    logits_per_a: Tensor, logits_per_b: Tensor, loss: str = "clip", convirt_lambda: float = 0.5
) -> Tensor:
    """The cross-modal objective a cardiomm configuration names: ``"clip"`` (:func:`clip_loss`) or ``"convirt"``
    (:func:`convirt_loss` with ``λ = convirt_lambda``)."""
    if loss == "clip":
        return clip_loss(logits_per_a, logits_per_b)
    if loss == "convirt":
        return convirt_loss(logits_per_a, logits_per_b, convirt_lambda)
    raise ValueError(f"loss must be 'clip' or 'convirt', got {loss!r}")


def embedding_clip_loss(a: Tensor, b: Tensor, logit_scale: Tensor | float, gather: bool = True) -> Tensor:
    """:func:`clip_loss` of raw paired features ``a`` and ``b`` ``(B, D)``: L2-normalised, then compared at
    ``logit_scale`` (a shortcut for losses on features that are not model outputs, such as UMA's views)."""
    return clip_loss(*contrastive_logits(F.normalize(a, dim=-1), F.normalize(b, dim=-1), logit_scale, gather))


def unimodal_alignment_loss(
    latent: Tensor,
    dropout_p: float = 0.1,
    logit_scale: Tensor | float | None = None,
    temperature: float = 0.07,
    projector: Callable[[Tensor], Tensor] | None = None,
    training: bool = True,
    gather: bool = True,
    view_projections: Sequence[Callable[[Tensor], Tensor]] | None = None,
) -> Tensor:
    """MERL uni-modal alignment (UMA): two independent dropout views of the ECG latent, contrasted.

    ``z¹ = z ⊙ M¹`` and ``z² = z ⊙ M²`` with independent dropout masks of rate ``dropout_p`` (latent
    augmentation instead of signal-level augmentation); the two views of the same ECG are the positive pair
    and every other ECG of the (gathered) batch a negative, scored with :func:`embedding_clip_loss`.

    Args:
        latent: ECG embeddings ``(B, D)``.
        dropout_p: dropout rate of each view (MERL: 0.1).
        logit_scale: multiplier of the similarities (e.g. a learnable ``logit_scale.exp()``); when ``None``,
            ``1 / temperature`` is used.
        temperature: temperature used when ``logit_scale`` is ``None``.
        projector: optional module applied to each view after dropout (e.g. the ECG projection head).
        training: apply dropout (pass ``self.training``); without it both views equal ``latent``.
        gather: use the negatives of every process when running distributed.
        view_projections: two modules, one per view, applied to the latent *before* dropout: MERL's released code
            forms the views as ``dropout(linear_1(z))`` and ``dropout(linear_2(z))``.
    """
    if view_projections is not None:
        if len(view_projections) != 2:
            raise ValueError(f"view_projections needs one module per view (2), got {len(view_projections)}")
        view_1 = F.dropout(view_projections[0](latent), p=dropout_p, training=training)
        view_2 = F.dropout(view_projections[1](latent), p=dropout_p, training=training)
    else:
        view_1 = F.dropout(latent, p=dropout_p, training=training)
        view_2 = F.dropout(latent, p=dropout_p, training=training)
    if projector is not None:
        view_1, view_2 = projector(view_1), projector(view_2)
    scale = logit_scale if logit_scale is not None else 1.0 / temperature
    return embedding_clip_loss(view_1, view_2, scale, gather=gather)


def multi_positive_contrastive_loss(
    features: Tensor,
    positive_mask: Tensor | None = None,
    temperature: float = 0.07,
    labels: Tensor | None = None,
    positive_aggregation: str = "sum",
    gather: bool = True,
) -> Tensor:
    """Contrastive loss with several positives per anchor ("good views" of ECGs, SupCon).

    For anchor ``i`` with positives ``P(i)`` and candidates ``A(i)`` (every other sample of the gathered batch)::

        sum:  -log( Σ_{p∈P(i)} exp(s_ip/τ) / Σ_{k∈A(i)} exp(s_ik/τ) )          (Jeong et al., Eq. 1)
        mean: -1/|P(i)| Σ_{p∈P(i)} log( exp(s_ip/τ) / Σ_{k∈A(i)} exp(s_ik/τ) )  (SupCon L_out)

    with ``s`` the cosine similarity. Anchors without any positive are left out; the loss is the mean over
    the anchors that have one (normalised by their global count when distributed, so the mean over processes
    is the loss of the whole batch).

    Args:
        features: embeddings ``(B, D)`` of all views in the local batch (L2-normalised here).
        positive_mask: boolean ``(B, B)`` (``(B, world_size * B)`` when distributed: local anchors against the
            gathered batch, columns ordered by rank) marking positive pairs; the diagonal (self-pairs) is
            ignored. Either this or ``labels``.
        temperature: ``τ``.
        labels: ``(B,)`` group ids (same patient, rhythm, demographic bucket, ...); samples sharing a label are
            positives. Gathered across processes, so it works unchanged when distributed.
        positive_aggregation: ``"sum"`` or ``"mean"`` (see above).
        gather: use the samples of every process as candidates when running distributed.
    """
    if (positive_mask is None) == (labels is None):
        raise ValueError("pass exactly one of positive_mask and labels")
    if positive_aggregation not in ("sum", "mean"):
        raise ValueError(f"positive_aggregation must be 'sum' or 'mean', got {positive_aggregation!r}")
    rank, world_size = _world() if gather else (0, 1)
    batch_size = features.shape[0]
    features = F.normalize(features, dim=-1)
    all_features = gather_features(features) if world_size > 1 else features
    num_candidates = all_features.shape[0]

    if labels is not None:
        if labels.shape != (batch_size,):
            raise ValueError(f"labels must have shape ({batch_size},), got {tuple(labels.shape)}")
        all_labels = _gather_no_grad(labels) if world_size > 1 else labels
        positive_mask = labels[:, None] == all_labels[None, :]
    elif positive_mask.shape != (batch_size, num_candidates):
        raise ValueError(
            f"positive_mask must have shape ({batch_size}, {num_candidates}) (local anchors × gathered batch), "
            f"got {tuple(positive_mask.shape)}"
        )

    logits = features @ all_features.T / temperature
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    local_index = torch.arange(batch_size, device=features.device)
    self_mask[local_index, local_index + rank * batch_size] = True
    positive_mask = positive_mask.to(torch.bool) & ~self_mask
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_denominator = torch.logsumexp(logits, dim=1)

    has_positive = positive_mask.any(dim=1)
    if positive_aggregation == "sum":
        # rows without a positive are dropped below; keep them finite so no NaN reaches the gradient
        numerator_mask = positive_mask | ~has_positive[:, None]
        log_numerator = torch.logsumexp(logits.masked_fill(~numerator_mask, float("-inf")), dim=1)
        per_anchor = log_denominator - log_numerator
    else:
        log_prob = logits - log_denominator[:, None]
        positives_per_anchor = positive_mask.sum(dim=1).clamp(min=1)
        per_anchor = -(log_prob.masked_fill(~positive_mask, 0.0).sum(dim=1)) / positives_per_anchor

    local_sum = per_anchor.masked_fill(~has_positive, 0.0).sum()
    count = has_positive.sum().to(features.dtype)
    if world_size > 1:
        count = count.detach().clone()
        torch.distributed.all_reduce(count)
        count = count / world_size  # mean over processes of the local losses = global sum / global count
    return local_sum / count.clamp(min=1.0)


def _gather_no_grad(tensor: Tensor) -> Tensor:
    _, world_size = _world()
    gathered = [torch.empty_like(tensor) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def multimodal_clip_loss(
    embeds: dict[str, Tensor],
    masks: dict[str, Tensor | None],
    logit_scale: Tensor | float,
    gather: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sum of the CLIP losses of every pair of modalities, each over the patients that have both (CLERC).

    Row ``i`` of every modality belongs to patient ``i``. For each pair ``(a, b)`` of distinct modalities (in the
    order of ``embeds``) with at least two patients having both, in the whole batch when distributed, the pair's
    loss is :func:`clip_loss` of ``logit_scale`` times the cosine similarities of those patients' ``a`` and ``b``
    embeddings; pairs with fewer patients contribute nothing. Rows of patients without a modality never enter any
    logit, so their filler values (zeros, NaN) do not matter.

    Distributed, the embeddings and masks of every process are gathered (embeddings with gradients, through
    :func:`gather_features`) and, as for the other losses of this module, each process scores its local patients
    against the gathered batch: the mean over processes of the returned values equals the loss of one process on the
    concatenated batch, and so do the data-parallel averaged gradients. Every process must pass the same modalities
    (as keys, in the same order) and batches of the same size.

    Args:
        embeds: modality -> ``(B, D)`` L2-normalised embeddings of the same ``B`` patients.
        masks: modality -> ``(B,)`` bool, True for the patients who have it; a missing key or ``None`` means every
            patient has it.
        logit_scale: multiplier of the cosine similarities, ``1 / temperature``.
        gather: compare with the patients of every process when running distributed.

    Returns:
        ``(loss, pair_losses, pair_counts)``: the sum of the pair losses (0, still connected to the embeddings, when
        no pair has two patients); ``(K, K)`` pair losses (symmetric, detached, 0 for pairs without a loss and on the
        diagonal) over the ``K`` modalities of ``embeds``; ``(K, K)`` patients having both modalities, over every
        process (the diagonal: patients having the modality).
    """
    names = list(embeds)
    if not names:
        raise ValueError("multimodal_clip_loss needs the embeddings of at least one modality")
    unknown = sorted(set(masks) - set(names))
    if unknown:
        raise ValueError(f"masks of modalities without embeddings: {unknown}")
    first = embeds[names[0]]
    batch_size, device = first.shape[0], first.device
    local_masks: list[Tensor | None] = []
    for name in names:
        if embeds[name].dim() != 2 or embeds[name].shape[0] != batch_size:
            raise ValueError(f"{name} embeddings must have shape ({batch_size}, dim), got {tuple(embeds[name].shape)}")
        mask = masks.get(name)
        if mask is not None:
            if mask.shape != (batch_size,):
                raise ValueError(f"{name} mask must have shape ({batch_size},), got {tuple(mask.shape)}")
            mask = mask.to(device=device, dtype=torch.bool)
        local_masks.append(mask)
    rank, world_size = _world() if gather else (0, 1)
    num = len(names)

    if world_size == 1 and all(mask is None for mask in local_masks):
        counts = [[batch_size] * num for _ in range(num)]  # every patient has every modality: no data-dependent step
    else:
        mask_matrix = torch.stack(
            [m if m is not None else torch.ones(batch_size, dtype=torch.bool, device=device) for m in local_masks], 1
        )  # (B, K)
        if world_size > 1:
            all_masks = _gather_no_grad(mask_matrix)
            all_embeds = gather_features(torch.stack([embeds[name] for name in names], dim=1))  # (W * B, K, D)
        else:
            all_masks = mask_matrix
        present = all_masks.float()  # exact counts up to 2**24 patients
        counts = (present.T @ present).round().long().tolist()

    pair_losses = torch.zeros(num, num, device=device, dtype=first.dtype)
    loss = None
    for i in range(num):
        for j in range(i + 1, num):
            if counts[i][j] < 2:
                continue
            a, b = embeds[names[i]], embeds[names[j]]
            if world_size == 1:
                if local_masks[i] is not None or local_masks[j] is not None:
                    both = mask_matrix[:, i] & mask_matrix[:, j]
                    a, b = a[both], b[both]
                pair_loss = clip_loss(logit_scale * a @ b.T)
            else:
                both_local = mask_matrix[:, i] & mask_matrix[:, j]
                both_all = all_masks[:, i] & all_masks[:, j]
                # position of each local patient having both among the gathered patients having both
                positions = (torch.cumsum(both_all.long(), 0) - 1)[rank * batch_size:(rank + 1) * batch_size]
                labels = positions[both_local]
                logits_a = logit_scale * a[both_local] @ all_embeds[both_all, j].T
                logits_b = logit_scale * b[both_local] @ all_embeds[both_all, i].T
                summed = F.cross_entropy(logits_a, labels, reduction="sum") + F.cross_entropy(
                    logits_b, labels, reduction="sum"
                )
                pair_loss = 0.5 * summed * world_size / counts[i][j]
            pair_losses[i, j] = pair_losses[j, i] = pair_loss.detach()
            loss = pair_loss if loss is None else loss + pair_loss
    if loss is None:  # no pair: a zero that still reaches every input, so that backward() works
        loss = sum(embeds[name].sum() for name in names) * 0.0
        if isinstance(logit_scale, Tensor):
            loss = loss + logit_scale.sum() * 0.0
    pair_counts = torch.tensor(counts, dtype=torch.long, device=device)
    return loss, pair_losses, pair_counts
