"""The contrastive core every ECG contrastive model builds on (``modeling_ecg_contrastive``): one family base, one
locking mechanism (gradients, memory, modes, survives loading), tower options reaching the towers, the ECG time
mask reaching the ECG tower, and the transformers 5 ``get_*_features`` convention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, PreTrainedModel

from cardiomm import (
    ECGContrastiveConfig,
    ECGContrastivePreTrainedModel,
    ECGDualEncoderConfig,
    ECGDualEncoderModel,
    ECGEncoderConfig,
    ECGSEHRDualEncoder,
    ECGSEHRDualEncoderConfig,
    ECGTextDualEncoder,
    ECGTextDualEncoderConfig,
    SEHRBertConfig,
    SEHRECGTextConfig,
    SEHRECGTextModel,
)

BATCH, TIME, TOKENS = 4, 200, 9
SHARED_FIELDS = ("ecg_config", "projection_dim", "projection_hidden_size", "projection_type", "logit_scale_init_value",
                 "learnable_temperature", "loss", "freeze_ecg")


def text_config(layers: int = 3) -> BertConfig:
    return BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                      intermediate_size=48, max_position_embeddings=32)


def ecg_config(backbone: str = "resnet1d_8") -> ECGEncoderConfig:
    if backbone == "vit_tiny":
        return ECGEncoderConfig(backbone="vit_tiny", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=37, patch_size=50, max_length=TIME)
    return ECGEncoderConfig(backbone="resnet1d_8", stage_channels=[16, 16], stage_depths=[1, 1],
                            stage_kernel_sizes=[5, 3], stage_strides=[2, 2])


def text_model(**overrides) -> ECGTextDualEncoder:
    torch.manual_seed(0)
    fields = dict(ecg_config=ecg_config(), text_config=text_config(), projection_dim=16, projection_hidden_size=24,
                  text_pooling="mean")
    return ECGTextDualEncoder(ECGTextDualEncoderConfig(**{**fields, **overrides}))


def text_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(BATCH, TOKENS, dtype=torch.long)
    mask[1:, -3:] = 0
    return {"input_values": torch.randn(BATCH, 12, TIME, generator=generator),
            "input_ids": torch.randint(5, 64, (BATCH, TOKENS), generator=generator) * mask,
            "attention_mask": mask}


def saved_activation_bytes(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """Bytes autograd keeps for the backward pass of one training forward."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**batch).loss.backward()
    return total


# ------------------------------------------------------------------------------------------------ one family base
def test_one_pretrained_model_per_family_and_no_diamond() -> None:
    for model_class in (ECGTextDualEncoder, ECGSEHRDualEncoder, SEHRECGTextModel):
        assert len(model_class.__bases__) == 1, model_class.__bases__
        family = [c for c in model_class.__mro__ if issubclass(c, PreTrainedModel) and c is not PreTrainedModel]
        assert family[-1] is ECGContrastivePreTrainedModel
        assert all(len(c.__bases__) == 1 for c in family), [c.__bases__ for c in family]
    assert ECGTextDualEncoder.__bases__ == (ECGDualEncoderModel,)
    assert ECGSEHRDualEncoder.__bases__ == (ECGDualEncoderModel,)


def test_composite_configs_inherit_the_shared_fields() -> None:
    for config_class, base in ((ECGTextDualEncoderConfig, ECGDualEncoderConfig),
                               (ECGSEHRDualEncoderConfig, ECGDualEncoderConfig),
                               (SEHRECGTextConfig, ECGContrastiveConfig)):
        assert issubclass(config_class, base)
        declared = set(config_class.__dict__.get("__annotations__", {})) & set(SHARED_FIELDS)
        # a model may change a shared field's default (τ = 0.1 and ConVIRT for Lalam et al.), nothing else
        base_config = ECGContrastiveConfig()
        config = config_class()
        assert all(getattr(config, name) != getattr(base_config, name) for name in declared), declared
        assert all(hasattr(config, name) for name in SHARED_FIELDS)
    with pytest.raises(ValueError, match="projection_type"):
        SEHRECGTextConfig(projection_type="deep")  # the shared validation runs for every model


# -------------------------------------------------------------------------------------------------------- locking
@pytest.mark.parametrize("num_frozen", [1, 3, -1])
def test_locked_layers_get_no_gradient_and_stay_in_eval_mode(num_frozen: int) -> None:
    model = text_model(freeze_text_layers=num_frozen).train()
    model(**text_batch()).loss.backward()
    text = model.text_model
    frozen = [text.embeddings, *text.encoder.layer[: 3 if num_frozen == -1 else num_frozen]]
    trained = list(text.encoder.layer[len(frozen) - 1:]) if num_frozen != -1 else []
    for module in frozen:
        assert not module.training
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())
    for module in trained:
        assert module.training
        assert all(p.requires_grad and p.grad is not None for p in module.parameters())
    assert all(p.grad is not None for p in model.ecg_model.parameters())
    assert all(not p.requires_grad for p in text.pooler.parameters())  # text_pooling="mean" never reaches it


def test_locking_saves_the_activation_memory_of_the_locked_prefix() -> None:
    saved = {n: saved_activation_bytes(text_model(freeze_text_layers=n).train(), text_batch()) for n in (0, 1, 2, 3)}
    assert saved[0] > saved[1] > saved[2] > saved[3], saved
    # a fully locked text tower keeps nothing: the same as locking every layer and the embeddings
    assert saved_activation_bytes(text_model(freeze_text_layers=-1).train(), text_batch()) <= saved[3]


def test_locked_ecg_tower_keeps_its_batch_norm_statistics() -> None:
    model = text_model(freeze_ecg=True).train()
    before = {k: v.clone() for k, v in model.ecg_model.state_dict().items()}
    model(**text_batch()).loss.backward()
    after = model.ecg_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.ecg_model.parameters())


def test_a_loaded_model_is_locked_as_its_configuration_says(tmp_path) -> None:
    text_model(freeze_text_layers=2, freeze_ecg=True).save_pretrained(tmp_path)
    from transformers import AutoModel

    loaded = AutoModel.from_pretrained(tmp_path).train()
    assert type(loaded) is ECGTextDualEncoder
    assert all(not p.requires_grad for p in loaded.ecg_model.parameters())
    assert all(not p.requires_grad for p in loaded.text_model.encoder.layer[1].parameters())
    assert all(p.requires_grad for p in loaded.text_model.encoder.layer[2].parameters())
    assert not loaded.text_model.encoder.layer[1].training and loaded.text_model.encoder.layer[2].training


# ------------------------------------------------------------------------------------------------ tower options
@pytest.mark.parametrize("model_name", ["ecg_text", "ecg_sehr", "sehr_ecg_text"])
def test_hidden_states_and_attentions_reach_the_towers(model_name: str) -> None:
    torch.manual_seed(0)
    sehr = SEHRBertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=37, max_position_embeddings=32, max_time_weeks=30)
    shared = dict(ecg_config=ecg_config(), projection_dim=16, projection_hidden_size=24)
    codes = {"ehr_input_ids": torch.randint(5, 40, (BATCH, 7)), "ehr_attention_mask": torch.ones(BATCH, 7).long()}
    batch = text_batch()
    if model_name == "ecg_text":
        model = ECGTextDualEncoder(ECGTextDualEncoderConfig(text_config=text_config(), **shared))
        towers = {"text_model_output": 3}
    elif model_name == "ecg_sehr":
        model = ECGSEHRDualEncoder(ECGSEHRDualEncoderConfig(ehr_config=sehr, freeze_ehr_layers=0, **shared))
        batch = {"input_values": batch["input_values"], **codes}
        towers = {"ehr_model_output": 2}
    else:
        model = SEHRECGTextModel(SEHRECGTextConfig(ehr_config=sehr, text_config=text_config(), freeze_ehr_layers=0,
                                                   **shared))
        batch = {**batch, **codes}
        towers = {"ehr_model_output": 2, "text_model_output": 3}
    model.set_attn_implementation("eager")  # attention weights are returned by the eager implementation
    model.eval()
    with torch.no_grad():
        plain = model(**batch)
        out = model(**batch, output_hidden_states=True, output_attentions=True)
    assert plain.ecg_model_output.hidden_states is None
    assert len(out.ecg_model_output.hidden_states) == 2  # one per ResNet stage
    for name, layers in towers.items():
        assert getattr(plain, name).hidden_states is None
        assert len(getattr(out, name).hidden_states) == layers + 1
        assert len(getattr(out, name).attentions) == layers
    torch.testing.assert_close(out.loss, plain.loss, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------- time mask
def test_time_mask_reaches_the_ecg_tower_of_a_dual_encoder() -> None:
    """Padded ECG samples (time_mask 0) do not change the embedding, whatever they hold; without the mask they do."""
    model = text_model(ecg_config=ecg_config("vit_tiny")).eval()
    batch = text_batch()
    time_mask = torch.ones(BATCH, TIME, dtype=torch.long)
    time_mask[0, 100:] = 0
    outs = []
    for value in (0.0, 5.0):
        values = batch["input_values"].clone()
        values[0, :, 100:] = value
        with torch.no_grad():
            outs.append((model(**{**batch, "input_values": values}, time_mask=time_mask).ecg_embeds,
                         model(**{**batch, "input_values": values}).ecg_embeds))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    assert not torch.allclose(outs[0][1][0], outs[1][1][0], atol=1e-4)


# ------------------------------------------------------------------------------------------- features convention
def test_get_features_return_tower_outputs_with_projected_pooler_output() -> None:
    model = text_model().eval()
    batch = text_batch()
    with torch.no_grad():
        out = model(**batch)
        ecg = model.get_ecg_features(batch["input_values"])
        text = model.get_text_features(batch["input_ids"], batch["attention_mask"], output_hidden_states=True)
        as_tuple = model.get_text_features(batch["input_ids"], batch["attention_mask"], return_dict=False)
    torch.testing.assert_close(F.normalize(ecg.pooler_output, dim=-1), out.ecg_embeds)
    torch.testing.assert_close(F.normalize(text.pooler_output, dim=-1), out.text_embeds)
    assert ecg.last_hidden_state.shape[0] == BATCH and text.last_hidden_state.shape == (BATCH, TOKENS, 32)
    assert len(text.hidden_states) == 4
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[1], text.pooler_output)
