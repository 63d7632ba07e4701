"""Checkpoints saved by an earlier cardiomm load into the installed one and give the same outputs.

``tests/fixtures/checkpoints/`` holds one tiny checkpoint per model family, written by
``tests/fixtures/make_checkpoints.py`` from the cardiomm commit named in its ``manifest.json``, with fixed inputs
and the outputs that commit computed (model in eval mode, and the saved preprocessing on a raw ECG / report /
code timeline). Each checkpoint is loaded here as a user loads it: through the Auto classes, without
``trust_remote_code``, so the installed cardiomm classes run. Weights must load with no missing or unexpected key
and every stored output must come back bit for bit (the contrastive losses to float32 rounding, see
``LOSS_RTOL``): the same CPU kernels run on the same stored inputs in one thread, so there is no tolerance.
Outputs the installed code adds are allowed; a stored output it no longer returns is a failure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import (
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoProcessor,
    AutoTokenizer,
    BertTokenizer,
)
from transformers.utils import ModelOutput

import cardiomm

CHECKPOINTS = Path(__file__).parent / "fixtures" / "checkpoints"
CODE_TOKENIZER_FOLDER = "sehr_tokenizer"


# ----------------------------------------------------------------------------------------- preprocessing per fixture
@dataclass(frozen=True)
class Preprocessor:
    """One saved preprocessor: how a user loads it, the class it must be, and how it is called on the raw input
    (``raw``: the ``raw.*`` tensors and the JSON raw inputs of ``inputs.safetensors``)."""

    key: str
    load: Callable[[Path], Any]
    expected_class: type
    call: Callable[[Any, dict[str, Any], dict[str, Any]], dict[str, Any]]


def _ecg(extractor: Any, raw: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    return extractor(raw["raw.ecg"].numpy(), **kwargs)


def _reports(tokenizer: Any, raw: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    return tokenizer(raw["reports"], **kwargs)


def _timelines(tokenizer: Any, raw: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    timelines = [[tuple(event) for event in timeline] for timeline in raw["timelines"]]
    return tokenizer(timelines, raw["reference_times"], **kwargs)


def _ecg_and_reports(processor: Any, raw: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    return processor(ecg=raw["raw.ecg"].numpy(), text=raw["reports"], **kwargs)


FEATURE_EXTRACTOR = Preprocessor("feature_extractor", AutoFeatureExtractor.from_pretrained,
                                 cardiomm.ECGFeatureExtractor, _ecg)
CODE_TOKENIZER = Preprocessor("tokenizer", AutoTokenizer.from_pretrained, cardiomm.MedicalCodeTokenizer, _timelines)


@dataclass(frozen=True)
class Fixture:
    """A fixture folder: its model class, the Auto class of its head (``None`` for base models) and its
    preprocessing."""

    model_class: type
    head_auto_class: type | None
    preprocessors: tuple[Preprocessor, ...]


FIXTURES: dict[str, Fixture] = {
    "ecg_encoder_resnet1d": Fixture(cardiomm.ECGEncoderModel, None, (FEATURE_EXTRACTOR,)),
    "ecg_encoder_vit": Fixture(cardiomm.ECGEncoderModel, None, (FEATURE_EXTRACTOR,)),
    "ecg_encoder_for_sequence_classification": Fixture(
        cardiomm.ECGEncoderForSequenceClassification, AutoModelForSequenceClassification, (FEATURE_EXTRACTOR,)
    ),
    "ecg_text_dual_encoder": Fixture(
        cardiomm.ECGTextDualEncoder, None,
        (Preprocessor("processor", AutoProcessor.from_pretrained, cardiomm.ECGTextProcessor, _ecg_and_reports),),
    ),
    "sehr_bert_for_masked_lm": Fixture(cardiomm.SEHRBertForMaskedLM, AutoModelForMaskedLM, (CODE_TOKENIZER,)),
    "ecg_sehr_dual_encoder": Fixture(cardiomm.ECGSEHRDualEncoder, None, (FEATURE_EXTRACTOR, CODE_TOKENIZER)),
    "sehr_ecg_text_model": Fixture(
        cardiomm.SEHRECGTextModel, None,
        (
            FEATURE_EXTRACTOR,
            Preprocessor("tokenizer", AutoTokenizer.from_pretrained, BertTokenizer, _reports),
            Preprocessor("code_tokenizer", lambda folder: AutoTokenizer.from_pretrained(folder / CODE_TOKENIZER_FOLDER),
                         cardiomm.MedicalCodeTokenizer, _timelines),
        ),
    ),
}


# Input and output names that changed since the fixtures were written: the stored tensors are read under the new
# name. Codes are `ehr_*` inputs of every composite model; the feature extractor's time mask is `time_mask`.
RENAMED_MODEL_INPUTS: dict[str, dict[str, str]] = {
    "ecg_sehr_dual_encoder": {"input_ids": "ehr_input_ids", "attention_mask": "ehr_attention_mask",
                              "time_ids": "ehr_time_ids", "type_ids": "ehr_type_ids"},
}
RENAMED_PREPROCESSING_OUTPUTS: dict[str, dict[str, str]] = {"feature_extractor": {"attention_mask": "time_mask"}}


# -------------------------------------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """The stored outputs were computed with one intra-op thread; the same thread count keeps the same
    reduction order, hence bit-identical results."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def flatten_output(value: Any, prefix: str, into: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor of a model output; nested outputs and tuples flattened into dotted names (as stored)."""
    if isinstance(value, torch.Tensor):
        into[prefix] = value
    elif isinstance(value, (ModelOutput, dict)):
        for key, item in value.items():
            flatten_output(item, f"{prefix}.{key}", into)
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            flatten_output(item, f"{prefix}.{i}", into)
    return into


def read_inputs(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Model inputs, raw preprocessing inputs, the model call's other keyword arguments, the preprocessing calls'
    keyword arguments."""
    path = folder / "inputs.safetensors"
    tensors = load_file(path)
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
    model_inputs = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    raw = {k: v for k, v in tensors.items() if k.startswith("raw.")}
    raw.update(json.loads(metadata["raw"]))
    return model_inputs, raw, json.loads(metadata["model_call"]), json.loads(metadata["preprocessing_call"])


# The contrastive losses are now computed from the logits the model returns (built once from the L2-normalised
# embeddings); the fixtures' code normalised the embeddings a second time inside the loss. Normalising a unit
# vector again changes it by at most an ulp, so those losses may differ by float32 rounding (relative 1e-6) and
# nothing else; every other output, including the logits and embeddings, must be bit-identical.
LOSS_RTOL = 1e-6


def assert_outputs_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    missing = sorted(set(expected) - set(actual))
    assert not missing, f"{what}: outputs no longer returned: {missing}"
    contrastive = any(name.startswith("model.logits_per_ecg") for name in expected)
    for name, tensor in expected.items():
        rtol = LOSS_RTOL if contrastive and name.endswith("loss") and name.count(".") == 1 else 0.0
        torch.testing.assert_close(actual[name], tensor, atol=0, rtol=rtol,
                                   msg=lambda m, n=name: f"{what} {n}: {m}")


def load_checkpoint(auto_class: type, folder: Path) -> tuple[torch.nn.Module, dict[str, list]]:
    model, info = auto_class.from_pretrained(folder, output_loading_info=True)
    return model.eval(), info


# ----------------------------------------------------------------------------------------------------------- tests
def test_manifest_names_the_commit_and_every_fixture() -> None:
    manifest = json.loads((CHECKPOINTS / "manifest.json").read_text(encoding="utf-8"))
    assert len(manifest["cardiomm_commit"]) == 40 and int(manifest["cardiomm_commit"], 16) >= 0
    assert set(manifest["fixtures"]) == set(FIXTURES)
    assert {p.name for p in CHECKPOINTS.iterdir() if p.is_dir()} == set(FIXTURES)
    for name, fixture in FIXTURES.items():
        assert manifest["fixtures"][name]["model_class"] == fixture.model_class.__name__


def version_note() -> str:
    """The library versions that differ from those that computed the stored outputs (for failure messages: other
    torch kernels may round differently)."""
    stored = json.loads((CHECKPOINTS / "manifest.json").read_text(encoding="utf-8"))["versions"]
    installed = {"torch": torch.__version__, "transformers": transformers.__version__}
    changed = [f"{k} {stored[k]} -> {v}" for k, v in installed.items() if stored.get(k) != v]
    return f" (stored with other versions: {', '.join(changed)})" if changed else ""


@pytest.mark.parametrize("name", list(FIXTURES))
def test_checkpoint_loads_with_identical_outputs(name: str) -> None:
    fixture, folder = FIXTURES[name], CHECKPOINTS / name
    what = name + version_note()
    inputs, raw, call_kwargs, preprocessing_calls = read_inputs(folder)
    renamed = RENAMED_MODEL_INPUTS.get(name, {})
    inputs = {renamed.get(k, k): v for k, v in inputs.items()}
    expected = load_file(folder / "expected_outputs.safetensors")
    expected_model = {k: v for k, v in expected.items() if k.startswith("model.")}

    # the model class itself: through its head's Auto class, or AutoModel for base models
    model, info = load_checkpoint(fixture.head_auto_class or AutoModel, folder)
    assert type(model) is fixture.model_class, f"{name}: loaded {type(model).__module__}.{type(model).__name__}"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], (name, info)
    with torch.no_grad():
        output = model(**inputs, **call_kwargs, return_dict=True)
    assert_outputs_equal(flatten_output(output, "model", {}), expected_model, what)

    if fixture.head_auto_class is not None:
        # AutoModel gives the base model: all of its weights come from the checkpoint (the head's are left out)
        # and its outputs are the head model's encoder outputs
        base, info = load_checkpoint(AutoModel, folder)
        assert type(base) is type(model.base_model) and type(base).__module__.startswith("cardiomm.")
        assert not info["missing_keys"] and not info["mismatched_keys"], (name, info)
        head_keys = set(model.state_dict()) - {f"{model.base_model_prefix}.{k}" for k in base.state_dict()}
        assert info["unexpected_keys"] and set(info["unexpected_keys"]) <= head_keys, (name, info, head_keys)
        with torch.no_grad():
            base_output = base(**{k: v for k, v in inputs.items() if k != "labels"},
                               **{k: v for k, v in call_kwargs.items() if k != "return_loss"}, return_dict=True)
        base_flat = flatten_output(base_output, "model", {})
        shared = {k: v for k, v in expected_model.items() if k in base_flat}
        assert any(k.startswith("model.hidden_states.") for k in shared), (name, sorted(base_flat))
        assert_outputs_equal(base_flat, shared, f"{what} (AutoModel)")

    # the saved preprocessing, loaded as a user loads it, on the stored raw input
    assert {p.key for p in fixture.preprocessors} == set(preprocessing_calls)
    for preprocessor in fixture.preprocessors:
        loaded = preprocessor.load(folder)
        assert type(loaded) is preprocessor.expected_class, f"{name}: {preprocessor.key} is {type(loaded)}"
        processed = preprocessor.call(loaded, raw, preprocessing_calls[preprocessor.key])
        prefix = f"processor.{preprocessor.key}."
        renamed = RENAMED_PREPROCESSING_OUTPUTS.get(preprocessor.key, {})
        stored = {k.removeprefix(prefix): v for k, v in expected.items() if k.startswith(prefix)}
        stored = {renamed.get(k, k): v for k, v in stored.items()}
        assert stored, f"{name}: no stored output of {preprocessor.key}"
        assert_outputs_equal(dict(processed), stored, f"{what} {preprocessor.key}")
