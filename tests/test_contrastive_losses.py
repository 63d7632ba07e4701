"""The contrastive losses: reference values, behaviour, exact equivalence of the distributed computation, and the
models' losses computed from the very logits they return (built once)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig

from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
from cardiomm.modeling.configuration_ecg_sehr import ECGSEHRDualEncoderConfig
from cardiomm.modeling.configuration_ecg_text import ECGTextDualEncoderConfig
from cardiomm.modeling.configuration_sehr_bert import SEHRBertConfig
from cardiomm.modeling.configuration_sehr_ecg_text import SEHRECGTextConfig
from cardiomm.modeling.contrastive_losses import (
    clip_loss,
    contrastive_logits,
    convirt_loss,
    embedding_clip_loss,
    gather_features,
    local_logits,
    multi_positive_contrastive_loss,
    paired_contrastive_loss,
    unimodal_alignment_loss,
)
from cardiomm.modeling.modeling_ecg_sehr import ECGSEHRDualEncoder
from cardiomm.modeling.modeling_ecg_text import ECGTextDualEncoder
from cardiomm.modeling.modeling_sehr_ecg_text import SEHRECGTextModel
from gloo_processes import run_in_gloo_processes

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


def _normalised_logits(a: torch.Tensor, b: torch.Tensor, scale) -> tuple[torch.Tensor, torch.Tensor]:
    return contrastive_logits(F.normalize(a, dim=-1), F.normalize(b, dim=-1), scale)


def test_contrastive_logits_are_scaled_cosine_similarities() -> None:
    torch.manual_seed(5)
    a, b = torch.randn(6, DIM), torch.randn(6, DIM)
    logits_per_a, logits_per_b = _normalised_logits(a, b, 14.0)
    expected = 14.0 * F.cosine_similarity(a[:, None], b[None, :], dim=-1)
    torch.testing.assert_close(logits_per_a, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(logits_per_b, logits_per_a.T)
    assert local_logits(logits_per_a) is logits_per_a  # one process: the logits are the local block
    with pytest.raises(ValueError, match="batch size"):
        contrastive_logits(a, b[:5], 14.0)


def test_clip_loss_matches_reference() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(6, DIM), torch.randn(6, DIM)
    expected = 0.5 * (_reference_direction(a, b, 14.0) + _reference_direction(b, a, 14.0))
    torch.testing.assert_close(embedding_clip_loss(a, b, 14.0), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embedding_clip_loss(a, b, torch.tensor(14.0)), expected, rtol=1e-5, atol=1e-6)
    logits_per_a, logits_per_b = _normalised_logits(a, b, 14.0)
    torch.testing.assert_close(clip_loss(logits_per_a, logits_per_b), expected, rtol=1e-5, atol=1e-6)
    # one process: the reverse logits default to the transpose, as transformers' clip_loss(similarity)
    assert torch.equal(clip_loss(logits_per_a), clip_loss(logits_per_a, logits_per_b))
    assert torch.equal(paired_contrastive_loss(logits_per_a, logits_per_b, "clip"), clip_loss(logits_per_a))
    with pytest.raises(ValueError, match="clip"):
        paired_contrastive_loss(logits_per_a, logits_per_b, "infonce")


def test_convirt_loss_weights_directions() -> None:
    torch.manual_seed(1)
    a, b = torch.randn(5, DIM), torch.randn(5, DIM)
    a_to_b, b_to_a = _reference_direction(a, b, 10.0), _reference_direction(b, a, 10.0)
    logits = _normalised_logits(a, b, 1 / 0.1)  # temperature 0.1
    torch.testing.assert_close(convirt_loss(*logits, lambda_=0.75), 0.75 * a_to_b + 0.25 * b_to_a, rtol=1e-5,
                               atol=1e-6)
    torch.testing.assert_close(convirt_loss(*logits, lambda_=1.0), a_to_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(convirt_loss(*logits, lambda_=0.0), b_to_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(convirt_loss(*logits, lambda_=0.5), embedding_clip_loss(a, b, 10.0), rtol=1e-5,
                               atol=1e-6)
    assert torch.equal(convirt_loss(logits[0]), convirt_loss(*logits))  # reverse logits default to the transpose
    assert torch.equal(paired_contrastive_loss(*logits, "convirt", 0.3), convirt_loss(*logits, lambda_=0.3))
    with pytest.raises(ValueError):
        convirt_loss(*logits, lambda_=1.5)


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
    expected = embedding_clip_loss(projector(view_1), projector(view_2), 1 / 0.07)
    torch.testing.assert_close(loss, expected)
    # without dropout the two views coincide: the loss is the CLIP loss of the latent with itself
    no_dropout = unimodal_alignment_loss(latent, 0.1, logit_scale=5.0, training=False)
    torch.testing.assert_close(no_dropout, embedding_clip_loss(latent, latent, 5.0))


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
    assert embedding_clip_loss(a, close, 14.0) < embedding_clip_loss(a, unrelated, 14.0)
    assert convirt_loss(*_normalised_logits(a, close, 10.0)) < convirt_loss(*_normalised_logits(a, unrelated, 10.0))
    groups = torch.arange(8).repeat(2)
    clustered = torch.cat([a[:8], a[:8] + 0.05 * torch.randn(8, DIM)])
    assert multi_positive_contrastive_loss(clustered, labels=groups) < multi_positive_contrastive_loss(
        torch.randn(16, DIM), labels=groups
    )
    # a few gradient steps on the CLIP loss pull the pairs together
    x = torch.randn(16, DIM, requires_grad=True)
    y = torch.randn(16, DIM)
    optimizer = torch.optim.SGD([x], lr=1.0)
    start = embedding_clip_loss(x, y, 10.0).item()
    for _ in range(20):
        optimizer.zero_grad()
        embedding_clip_loss(x, y, 10.0).backward()
        optimizer.step()
    assert embedding_clip_loss(x, y, 10.0).item() < 0.5 * start


def test_gather_features_is_identity_without_distributed() -> None:
    x = torch.randn(3, DIM)
    assert gather_features(x) is x


# ---------------------------------------------------------------------------------------------------------------
# the models: the loss they return is computed from the logits they return (logits built once)

MODEL_BATCH, MODEL_TIME = 4, 300


def _tiny_ecg_config() -> ECGEncoderConfig:
    return ECGEncoderConfig(backbone="vit_tiny", num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                            max_length=MODEL_TIME)


def _tiny_text_config() -> BertConfig:
    return BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                      max_position_embeddings=32)


def _tiny_ehr_config() -> SEHRBertConfig:
    return SEHRBertConfig(vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=24, max_time_weeks=60)


def _model_inputs(partners: tuple[str, ...]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    time_mask = torch.ones(MODEL_BATCH, MODEL_TIME, dtype=torch.long)
    time_mask[1, MODEL_TIME // 2:] = 0  # one ECG shorter than the crop
    inputs = {"input_values": torch.randn(MODEL_BATCH, 12, MODEL_TIME, generator=generator) * time_mask[:, None],
              "time_mask": time_mask}
    mask = torch.ones(MODEL_BATCH, 7, dtype=torch.long)
    mask[1:, -2:] = 0
    if "text" in partners:
        inputs.update(input_ids=torch.randint(5, 64, (MODEL_BATCH, 7), generator=generator) * mask,
                      attention_mask=mask)
    if "ehr" in partners:
        inputs.update(ehr_input_ids=torch.randint(5, 48, (MODEL_BATCH, 7), generator=generator) * mask,
                      ehr_attention_mask=mask,
                      ehr_time_ids=torch.randint(0, 121, (MODEL_BATCH, 7), generator=generator) * mask,
                      ehr_type_ids=torch.randint(1, 5, (MODEL_BATCH, 7), generator=generator) * mask)
    return inputs


@pytest.mark.parametrize(
    ("partner", "loss", "unimodal_alignment"),
    [("text", "clip", True), ("text", "convirt", False), ("ehr", "convirt", False), ("ehr", "clip", True)],
)
def test_dual_encoder_loss_is_paired_loss_of_its_returned_logits(partner: str, loss: str,
                                                                 unimodal_alignment: bool) -> None:
    fields = dict(ecg_config=_tiny_ecg_config(), projection_dim=8, projection_hidden_size=16, loss=loss,
                  convirt_lambda=0.75, unimodal_alignment=unimodal_alignment, uma_weight=0.5)
    torch.manual_seed(0)
    if partner == "text":
        model = ECGTextDualEncoder(ECGTextDualEncoderConfig(text_config=_tiny_text_config(), freeze_text_layers=1,
                                                            **fields))
    else:
        model = ECGSEHRDualEncoder(ECGSEHRDualEncoderConfig(ehr_config=_tiny_ehr_config(), freeze_ehr_layers=1,
                                                            **fields))
    model.train()
    out = model(**_model_inputs((partner,)))
    logits_per_partner = out[f"logits_per_{partner}"]
    assert torch.equal(logits_per_partner, out.logits_per_ecg.T)
    expected = paired_contrastive_loss(out.logits_per_ecg, logits_per_partner, loss, 0.75)
    torch.testing.assert_close(out.contrastive_loss, expected, rtol=0, atol=0)
    if unimodal_alignment:
        torch.testing.assert_close(out.loss, expected + 0.5 * out.unimodal_alignment_loss, rtol=0, atol=0)
    else:
        assert out.unimodal_alignment_loss is None
        torch.testing.assert_close(out.loss, expected, rtol=0, atol=0)
    # the returned logits are the scaled cosine similarities of the returned embeddings
    partner_embeds = out[f"{partner}_embeds"]
    torch.testing.assert_close(out.logits_per_ecg, model.logit_scale.exp() * out.ecg_embeds @ partner_embeds.T)
    # the loss is differentiable through those logits into both projections
    out.loss.backward()
    assert model.ecg_projection[0].weight.grad is not None
    assert getattr(model, f"{partner}_projection")[0].weight.grad is not None


@pytest.mark.parametrize("loss", ["convirt", "clip"])
def test_tri_modal_losses_are_paired_losses_of_its_returned_logits(loss: str) -> None:
    torch.manual_seed(0)
    model = SEHRECGTextModel(SEHRECGTextConfig(
        ecg_config=_tiny_ecg_config(), ehr_config=_tiny_ehr_config(), text_config=_tiny_text_config(),
        projection_dim=8, coarse_projection_dim=6, projection_hidden_size=16, freeze_ehr_layers=1, loss=loss,
        lambda_es=0.75, lambda_et=0.25, ecg_ehr_loss_weight=1.0, ecg_text_loss_weight=0.5,
    )).train()
    out = model(**_model_inputs(("ehr", "text")))
    ecg_ehr = paired_contrastive_loss(out.logits_per_ecg_ehr, out.logits_per_ecg_ehr.T, loss, 0.75)
    ecg_text = paired_contrastive_loss(out.logits_per_ecg_text, out.logits_per_ecg_text.T, loss, 0.25)
    torch.testing.assert_close(out.ecg_ehr_loss, ecg_ehr, rtol=0, atol=0)
    torch.testing.assert_close(out.ecg_text_loss, ecg_text, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, ecg_ehr + 0.5 * ecg_text, rtol=0, atol=0)
    scale = model.logit_scale.exp()
    torch.testing.assert_close(out.logits_per_ecg_ehr, scale * out.ecg_embeds @ out.ehr_embeds.T)
    torch.testing.assert_close(out.logits_per_ecg_text, scale * out.ecg_coarse_embeds @ out.text_embeds.T)


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
    for name in ("clip", "clip_logits", "convirt", "uma", "multi_labels", "multi_mask", "multi_mean"):
        projection = _projection()
        logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
        a_leaf = a.clone().requires_grad_(True)
        b_leaf = b.clone().requires_grad_(True)
        za, zb = projection(a_leaf), projection(b_leaf)
        if name == "clip":
            loss = embedding_clip_loss(za, zb, logit_scale.exp())
        elif name == "clip_logits":  # the path of the models: logits built once, the loss takes them
            logits_per_a, logits_per_b = contrastive_logits(F.normalize(za, dim=-1), F.normalize(zb, dim=-1),
                                                            logit_scale.exp())
            loss = paired_contrastive_loss(logits_per_a, logits_per_b, "clip")
            # the (B, B) block of this process's own pairs, as the models return it
            expected_block = logit_scale.exp() * F.normalize(za, dim=-1) @ F.normalize(zb, dim=-1).T
            torch.testing.assert_close(local_logits(logits_per_a), expected_block.detach(), rtol=1e-5, atol=1e-6)
        elif name == "convirt":
            logits = contrastive_logits(F.normalize(za, dim=-1), F.normalize(zb, dim=-1), 1 / 0.1)
            loss = convirt_loss(*logits, lambda_=0.75) + 0 * logit_scale
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


def _distributed_worker(rank: int) -> dict:
    inputs = _global_inputs()
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    groups = inputs["groups"]
    mask = (groups[:, None] == groups[None, :])[rows]  # local anchors × gathered batch
    gathered = gather_features(inputs["a"][rows])
    assert torch.equal(gathered, inputs["a"]), "gather_features must order the slices by rank"
    return _compute(inputs["a"][rows], inputs["b"][rows], groups[rows], mask)


def test_two_processes_match_one_process_on_the_concatenated_batch(tmp_path) -> None:
    """Two gloo processes with half the batch each reproduce one process on the whole batch.

    How the quantities compare: the loss of process ``r`` covers its local anchors only, and the mean of the
    two local losses equals the single-process loss. In the backward pass ``all_gather`` sums the gradients
    that every process sends to the gathered copy, so the local leaf gradient on process ``r`` is the gradient
    of ``Σ_s loss_s = W · loss`` w.r.t. its rows: divided by ``W`` it equals the single-process gradient of those
    rows. Parameters are replicated on every process, and data-parallel training (DDP, DeepSpeed) averages
    their gradients over processes; that average equals the single-process parameter gradient.
    """
    per_rank = run_in_gloo_processes(_distributed_worker, tmp_path, world_size=WORLD_SIZE, timeout=120)
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
