"""LoRA (peft) on the ECG encoders: Conv1d layers of the ResNets, attention/MLP projections of the ViT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper

from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
from cardiomm.modeling.modeling_ecg_encoder import ECGEncoderForSequenceClassification, ECGEncoderModel

TINY = {
    "resnet_basic": dict(backbone="resnet1d_18", stem_channels=8, stage_channels=[8, 16], stage_depths=[1, 1],
                         stage_kernel_sizes=[3, 3], stage_strides=[1, 2]),
    "resnet_bottleneck": dict(backbone="resnet1d_50", stem_channels=8, stage_channels=[4, 8], stage_depths=[1, 1],
                              stage_kernel_sizes=[5, 3], stage_strides=[2, 2]),
    "vit": dict(backbone="vit_tiny", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_length=500),
}


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 12, 500, generator=generator)
    y = (x[:, 1].mean(dim=-1) > 0).long()
    lead_mask = torch.ones(16, 12, dtype=torch.bool)
    lead_mask[::2, 6:] = False
    return x, y, lead_mask


@pytest.mark.parametrize("name", list(TINY))
def test_lora_trains_saves_reloads_and_merges(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    base = ECGEncoderForSequenceClassification(
        ECGEncoderConfig(**TINY[name], num_labels=2, problem_type="single_label_classification")
    )
    base.save_pretrained(tmp_path / "base")
    frozen_before = {k: v.clone() for k, v in base.ecg_encoder.state_dict().items()}
    x, y, lead_mask = _data()
    with torch.no_grad():
        base_logits = base.eval()(x, lead_mask=lead_mask).logits

    lora_config = LoraConfig(r=4, lora_alpha=8, target_modules=base.lora_target_modules,
                             modules_to_save=base.lora_modules_to_save)
    model = get_peft_model(base, lora_config)

    # every convolution (ResNet) / attention + MLP projection (ViT) carries a LoRA adapter
    adapted = {n for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    if base.config.backbone_family == "resnet1d":
        convs = [n for n, m in model.named_modules() if type(m) is torch.nn.Conv1d and "lora_" not in n]
        assert convs and all(n.endswith(".base_layer") for n in convs)  # no convolution left unadapted
        assert len(adapted) == len(convs)
    else:
        per_layer = {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
        assert len(adapted) == len(per_layer) * base.config.num_hidden_layers
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any("classifier" in n for n in trainable)

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss = model(input_values=x, lead_mask=lead_mask, labels=y).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses

    model.eval()
    with torch.no_grad():
        logits = model(input_values=x, lead_mask=lead_mask).logits
    assert not torch.allclose(logits, base_logits, atol=1e-4)  # the adapter changed the model
    for key, value in frozen_before.items():  # base weights untouched (adapted copies live in the wrapper)
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")) and "bn" not in key:
            original = model.get_base_model().ecg_encoder.state_dict()
            matches = [k for k in original if k.replace(".base_layer", "").replace(".original_module", "") == key]
            assert matches and torch.equal(original[matches[0]], value), key

    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    fresh = ECGEncoderForSequenceClassification.from_pretrained(tmp_path / "base")
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_values=x, lead_mask=lead_mask).logits, logits)

    merged = reloaded.merge_and_unload()
    assert type(merged) is ECGEncoderForSequenceClassification
    assert not any(isinstance(m, (LoraLayer, ModulesToSaveWrapper)) for m in merged.modules())
    with torch.no_grad():
        merged_logits = merged.eval()(x, lead_mask=lead_mask).logits
    assert torch.allclose(merged_logits, logits, rtol=1e-4, atol=1e-5)

    # the merged model is an ordinary checkpoint
    merged.save_pretrained(tmp_path / "merged")
    again = ECGEncoderForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert torch.equal(again(x, lead_mask=lead_mask).logits, merged_logits)


def test_lora_on_the_bare_encoder_keeps_the_embedding_until_trained() -> None:
    torch.manual_seed(0)
    encoder = ECGEncoderModel(ECGEncoderConfig(**TINY["resnet_basic"])).eval()
    assert "classifier" not in encoder.lora_modules_to_save
    x, _, lead_mask = _data()
    with torch.no_grad():
        expected = encoder(x, lead_mask=lead_mask).pooler_output
    model = get_peft_model(encoder, LoraConfig(r=2, target_modules=encoder.lora_target_modules,
                                               modules_to_save=encoder.lora_modules_to_save)).eval()
    with torch.no_grad():  # LoRA's B matrices start at zero: the adapted model starts as the base model
        assert torch.allclose(model(input_values=x, lead_mask=lead_mask).pooler_output, expected, atol=1e-5)
