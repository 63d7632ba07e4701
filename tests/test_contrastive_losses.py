"""The contrastive losses: reference values, behaviour, and exact equivalence of the distributed computation."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from cardiomm.modeling.contrastive_losses import (
    clip_loss,
    convirt_loss,
    gather_features,
    multi_positive_contrastive_loss,
    unimodal_alignment_loss,
)

WORLD_SIZE = 2
LOCAL_BATCH = 4
DIM = 8


def _reference_direction(anchors: torch.Tensor, candidates: torch.Tensor, scale: float) -> torch.Tensor:
    """Mean over i of -log softmax_k(scale * cos(anchor_i, candidate_k))[i], one row at a time."""
    anchors = anchors / anchors.norm(dim=1, keepdim=True)
    candidates = candidates / candidates.norm(dim=1, keepdim=True)
    terms = []
    for i in range(anchors.shape[0]):
        similarities = torch.stack([scale * anchors[i].dot(candidates[k]) for k in range(candidates.shape[0])])
        terms.append(-(similarities[i] - torch.log(torch.exp(similarities).sum())))
    return torch.stack(terms).mean()


def _reference_multi_positive(features: torch.Tensor, mask: torch.Tensor, temperature: float, mode: str):
    features = features / features.norm(dim=1, keepdim=True)
    losses = []
    n = features.shape[0]
    for i in range(n):
        positives = [j for j in range(n) if j != i and bool(mask[i, j])]
        if not positives:
            continue
        exp = {k: math.exp(float(features[i].dot(features[k])) / temperature) for k in range(n) if k != i}
        denominator = sum(exp.values())
        if mode == "sum":
            losses.append(-math.log(sum(exp[p] for p in positives) / denominator))
        else:
            losses.append(-sum(math.log(exp[p] / denominator) for p in positives) / len(positives))
    return sum(losses) / len(losses)


def test_clip_loss_matches_reference() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(6, DIM), torch.randn(6, DIM)
    expected = 0.5 * (_reference_direction(a, b, 14.0) + _reference_direction(b, a, 14.0))
    torch.testing.assert_close(clip_loss(a, b, 14.0), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(clip_loss(a, b, torch.tensor(14.0)), expected, rtol=1e-5, atol=1e-6)


def test_convirt_loss_weights_directions() -> None:
    torch.manual_seed(1)
    a, b = torch.randn(5, DIM), torch.randn(5, DIM)
    a_to_b, b_to_a = _reference_direction(a, b, 10.0), _reference_direction(b, a, 10.0)
    torch.testing.assert_close(convirt_loss(a, b, 0.1, 0.75), 0.75 * a_to_b + 0.25 * b_to_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(convirt_loss(a, b, 0.1, 1.0), a_to_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(convirt_loss(a, b, 0.1, 0.5), clip_loss(a, b, 10.0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        convirt_loss(a, b, 0.1, 1.5)


def test_unimodal_alignment_uses_two_independent_dropout_views() -> None:
    torch.manual_seed(2)
    latent = torch.randn(6, DIM)
    projector = torch.nn.Linear(DIM, 4)
    torch.manual_seed(123)
    loss = unimodal_alignment_loss(latent, dropout_p=0.3, temperature=0.07, projector=projector)
    torch.manual_seed(123)
    view_1 = F.dropout(latent, 0.3, training=True)
    view_2 = F.dropout(latent, 0.3, training=True)
    assert not torch.equal(view_1, view_2)
    expected = clip_loss(projector(view_1), projector(view_2), 1 / 0.07)
    torch.testing.assert_close(loss, expected)
    # without dropout the two views coincide: the loss is the CLIP loss of the latent with itself
    no_dropout = unimodal_alignment_loss(latent, 0.1, logit_scale=5.0, training=False)
    torch.testing.assert_close(no_dropout, clip_loss(latent, latent, 5.0))


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_multi_positive_loss_matches_reference(mode: str) -> None:
    torch.manual_seed(3)
    features = torch.randn(8, DIM)
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])  # sample 5 has no positive and is left out
    mask = groups[:, None] == groups[None, :]
    expected = _reference_multi_positive(features, mask, 0.5, mode)
    from_mask = multi_positive_contrastive_loss(features, mask, 0.5, positive_aggregation=mode)
    from_labels = multi_positive_contrastive_loss(features, temperature=0.5, labels=groups, positive_aggregation=mode)
    assert from_mask.item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(from_mask, from_labels)
    # with exactly one positive per anchor (two views of each ECG) both modes reduce to NT-Xent
    pairs = torch.arange(4).repeat(2)
    one = multi_positive_contrastive_loss(features, labels=pairs, temperature=0.5, positive_aggregation="sum")
    two = multi_positive_contrastive_loss(features, labels=pairs, temperature=0.5, positive_aggregation="mean")
    torch.testing.assert_close(one, two)


def test_multi_positive_loss_gradient_is_finite_with_anchor_lacking_positives() -> None:
    features = torch.randn(4, DIM, requires_grad=True)
    loss = multi_positive_contrastive_loss(features, labels=torch.tensor([0, 0, 1, 2]), temperature=0.1)
    loss.backward()
    assert torch.isfinite(features.grad).all()


def test_losses_fall_as_pairs_align() -> None:
    torch.manual_seed(4)
    a = torch.randn(16, DIM)
    unrelated = torch.randn(16, DIM)
    close = a + 0.05 * torch.randn(16, DIM)
    assert clip_loss(a, close, 14.0) < clip_loss(a, unrelated, 14.0)
    assert convirt_loss(a, close) < convirt_loss(a, unrelated)
    groups = torch.arange(8).repeat(2)
    clustered = torch.cat([a[:8], a[:8] + 0.05 * torch.randn(8, DIM)])
    assert multi_positive_contrastive_loss(clustered, labels=groups) < multi_positive_contrastive_loss(
        torch.randn(16, DIM), labels=groups
    )
    # a few gradient steps on the CLIP loss pull the pairs together
    x = torch.randn(16, DIM, requires_grad=True)
    y = torch.randn(16, DIM)
    optimizer = torch.optim.SGD([x], lr=1.0)
    start = clip_loss(x, y, 10.0).item()
    for _ in range(20):
        optimizer.zero_grad()
        clip_loss(x, y, 10.0).backward()
        optimizer.step()
    assert clip_loss(x, y, 10.0).item() < 0.5 * start


def test_gather_features_is_identity_without_distributed() -> None:
    x = torch.randn(3, DIM)
    assert gather_features(x) is x


# ---------------------------------------------------------------------------------------------------------------
# two CPU processes (gloo) against one process on the concatenated batch


def _global_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    n = WORLD_SIZE * LOCAL_BATCH
    return {
        "a": torch.randn(n, DIM, generator=generator),
        "b": torch.randn(n, DIM, generator=generator),
        "groups": torch.tensor([0, 1, 0, 2, 1, 3, 2, 5]),  # positives across the two ranks; group 3 and 5 alone
    }


def _projection() -> torch.nn.Module:
    torch.manual_seed(11)
    return torch.nn.Linear(DIM, DIM)


def _compute(a: torch.Tensor, b: torch.Tensor, groups: torch.Tensor, mask: torch.Tensor) -> dict[str, dict]:
    """Each loss of (projected) leaf inputs, with the gradients w.r.t. the inputs and the parameters."""
    results = {}
    for name in ("clip", "convirt", "uma", "multi_labels", "multi_mask", "multi_mean"):
        projection = _projection()
        logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
        a_leaf = a.clone().requires_grad_(True)
        b_leaf = b.clone().requires_grad_(True)
        za, zb = projection(a_leaf), projection(b_leaf)
        if name == "clip":
            loss = clip_loss(za, zb, logit_scale.exp())
        elif name == "convirt":
            loss = convirt_loss(za, zb, temperature=0.1, lambda_=0.75) + 0 * logit_scale
        elif name == "uma":  # dropout disabled so both computations see the same views
            loss = unimodal_alignment_loss(a_leaf, 0.1, logit_scale.exp(), projector=projection, training=False)
        elif name == "multi_labels":
            loss = multi_positive_contrastive_loss(za, labels=groups, temperature=0.2) + 0 * logit_scale
        elif name == "multi_mask":
            loss = multi_positive_contrastive_loss(za, mask, temperature=0.2) + 0 * logit_scale
        else:
            loss = multi_positive_contrastive_loss(za, labels=groups, temperature=0.2, positive_aggregation="mean")
            loss = loss + 0 * logit_scale
        loss.backward()
        results[name] = {
            "loss": loss.detach(),
            "grad_a": a_leaf.grad.clone(),
            "grad_b": None if b_leaf.grad is None else b_leaf.grad.clone(),
            "grad_weight": projection.weight.grad.clone(),
            "grad_bias": projection.bias.grad.clone(),
            "grad_logit_scale": logit_scale.grad.clone(),
        }
    return results


def _distributed_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        inputs = _global_inputs()
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        groups = inputs["groups"]
        mask = (groups[:, None] == groups[None, :])[rows]  # local anchors × gathered batch
        gathered = gather_features(inputs["a"][rows])
        assert torch.equal(gathered, inputs["a"]), "gather_features must order the slices by rank"
        results = _compute(inputs["a"][rows], inputs["b"][rows], groups[rows], mask)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_match_one_process_on_the_concatenated_batch(tmp_path) -> None:
    """Two gloo processes with half the batch each reproduce one process on the whole batch.

    How the quantities compare: the loss of process ``r`` covers its local anchors only, and the mean of the
    two local losses equals the single-process loss. In the backward pass ``all_gather`` sums the gradients
    that every process sends to the gathered copy, so the local leaf gradient on process ``r`` is the gradient
    of ``Σ_s loss_s = W · loss`` w.r.t. its rows: divided by ``W`` it equals the single-process gradient of those
    rows. Parameters are replicated on every process, and data-parallel training (DDP, DeepSpeed) averages
    their gradients over processes; that average equals the single-process parameter gradient.
    """
    ctx = torch.multiprocessing.get_context("spawn")
    init_file = str(tmp_path / "rendezvous")
    processes = [ctx.Process(target=_distributed_worker, args=(r, init_file, str(tmp_path))) for r in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]

    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    inputs = _global_inputs()
    groups = inputs["groups"]
    single = _compute(inputs["a"], inputs["b"], groups, groups[:, None] == groups[None, :])

    for name, expected in single.items():
        ranks = [results[name] for results in per_rank]
        mean_loss = sum(r["loss"] for r in ranks) / WORLD_SIZE
        torch.testing.assert_close(mean_loss, expected["loss"], rtol=1e-5, atol=1e-6, msg=f"{name}: loss")
        for key in ("grad_a", "grad_b"):
            if expected[key] is None:
                continue
            local = torch.cat([r[key] for r in ranks]) / WORLD_SIZE
            torch.testing.assert_close(local, expected[key], rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")
        for key in ("grad_weight", "grad_bias", "grad_logit_scale"):
            averaged = sum(r[key] for r in ranks) / WORLD_SIZE  # the data-parallel average
            torch.testing.assert_close(averaged, expected[key], rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")
