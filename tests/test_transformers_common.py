"""Every cardiomm model class runs transformers' own common model tests (``ModelTesterMixin``).

The mixin comes from the installed transformers version's sdist (see ``tests/transformers_common_tests.py``); the
module skips when it cannot be obtained. A new model gets the checks by adding a tiny configuration, an inputs
function and a ``unittest.TestCase`` below. Tests that do not apply are turned off with the mixin's own flags or
listed in ``skipped_tests`` with a "does not apply: ..." reason; ``known_gaps`` lists the checks a model does not
pass yet, with the reason — that list is meant to shrink.
"""

from __future__ import annotations

import unittest
from collections.abc import Callable

import pytest
import torch
from transformers import BertConfig, CLIPTextConfig, CLIPVisionConfig, PretrainedConfig

from cardiomm import (
    CLERCMultiEncoder,
    CLERCMultiEncoderConfig,
    ECGEncoderConfig,
    ECGEncoderForMultiTask,
    ECGEncoderForSequenceClassification,
    ECGEncoderModel,
    ECGMultiTaskConfig,
    ECGSEHRDualEncoder,
    ECGSEHRDualEncoderConfig,
    ECGSelfSupervisedConfig,
    ECGSelfSupervisedModel,
    ECGTextDualEncoder,
    ECGTextDualEncoderConfig,
    KMERLQueryModel,
    KMERLQueryModelConfig,
    R2Plus1DConfig,
    R2Plus1DVideoModel,
    SEHRBertConfig,
    SEHRBertForMaskedLM,
    SEHRBertModel,
    SEHRECGTextConfig,
    SEHRECGTextModel,
)
from transformers_common_tests import TransformersTestsUnavailable, load_model_tester_mixin

try:
    ModelTesterMixin = load_model_tester_mixin()
except TransformersTestsUnavailable as error:
    pytest.skip(f"transformers' common model tests are unavailable: {error}", allow_module_level=True)

BATCH, LEADS, TIME = 2, 12, 200
CODES, CODE_VOCAB = 7, 40
TOKENS, TEXT_VOCAB = 6, 64
NUM_LABELS = 3


# ------------------------------------------------------------------------------------------ tiny configurations

def resnet_config(**overrides) -> ECGEncoderConfig:
    return ECGEncoderConfig(backbone="resnet1d_8", stage_channels=[16, 16], stage_depths=[1, 1],
                            stage_kernel_sizes=[5, 3], stage_strides=[2, 2], num_labels=NUM_LABELS, **overrides)


def vit_config(**overrides) -> ECGEncoderConfig:
    return ECGEncoderConfig(backbone="vit_tiny", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=37, patch_size=50, max_length=TIME, num_labels=NUM_LABELS, **overrides)


def merl_vit_config(**overrides) -> ECGEncoderConfig:
    return ECGEncoderConfig(backbone="merl_vit_tiny", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            patch_size=50, max_length=TIME, num_labels=NUM_LABELS, **overrides)


def sehr_bert_config(**overrides) -> SEHRBertConfig:
    fields = dict(vocab_size=CODE_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=37, max_position_embeddings=32, max_time_weeks=30)
    return SEHRBertConfig(**{**fields, **overrides})


def text_config() -> BertConfig:
    return BertConfig(vocab_size=TEXT_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=32)


def ecg_text_config() -> ECGTextDualEncoderConfig:
    return ECGTextDualEncoderConfig(ecg_config=vit_config(), text_config=text_config(), projection_dim=16,
                                    projection_hidden_size=24)


def merl_resnet_text_config() -> ECGTextDualEncoderConfig:
    """MERL's ResNet head (1x1 conv + attention pooling) and its UMA view projections."""
    return ECGTextDualEncoderConfig(ecg_config=resnet_config(), text_config=text_config(), projection_dim=16,
                                    projection_hidden_size=24, ecg_projection_type="attention_pool",
                                    attention_pool_positions=TIME // 256 + 1, uma_projection=True)


def merl_vit_text_config() -> ECGTextDualEncoderConfig:
    return ECGTextDualEncoderConfig(ecg_config=merl_vit_config(), text_config=text_config(), projection_dim=16,
                                    projection_hidden_size=24, uma_projection=True)


def kmerl_config() -> KMERLQueryModelConfig:
    """K-MERL with a three-entity vocabulary (the model tests build it from the configuration alone, so the entity
    token ids are padding) and its lead / segment masking on in training mode."""
    return KMERLQueryModelConfig(ecg_config=vit_config(), text_config=text_config(), projection_dim=16,
                                 projection_hidden_size=24, entity_names=["a", "b", "c"], entity_max_length=4,
                                 query_hidden_size=16, query_num_layers=2, query_num_heads=2)


def ecg_sehr_config() -> ECGSEHRDualEncoderConfig:
    return ECGSEHRDualEncoderConfig(ecg_config=resnet_config(), ehr_config=sehr_bert_config(), projection_dim=16,
                                    projection_hidden_size=24, freeze_ehr_layers=0)


def sehr_ecg_text_config() -> SEHRECGTextConfig:
    return SEHRECGTextConfig(ecg_config=resnet_config(), ehr_config=sehr_bert_config(), text_config=text_config(),
                             projection_dim=16, coarse_projection_dim=8, projection_hidden_size=24,
                             freeze_ehr_layers=0)


# ------------------------------------------------------------------------------------------------------- inputs

def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ecg_inputs() -> dict[str, torch.Tensor]:
    return {"input_values": torch.randn(BATCH, LEADS, TIME, generator=_generator(0))}


def code_inputs(prefix: str = "") -> dict[str, torch.Tensor]:
    generator = _generator(1)
    mask = torch.ones(BATCH, CODES, dtype=torch.long)
    mask[1:, -2:] = 0  # a shorter sequence, padded
    ids = torch.randint(5, CODE_VOCAB, (BATCH, CODES), generator=generator) * mask
    return {
        prefix + "input_ids": ids,
        prefix + "attention_mask": mask,
        prefix + "time_ids": torch.randint(0, 31, (BATCH, CODES), generator=generator) * mask,
        prefix + "type_ids": torch.randint(1, 5, (BATCH, CODES), generator=generator) * mask,
    }


def text_inputs() -> dict[str, torch.Tensor]:
    generator = _generator(2)
    mask = torch.ones(BATCH, TOKENS, dtype=torch.long)
    mask[1:, -2:] = 0
    return {"input_ids": torch.randint(5, TEXT_VOCAB, (BATCH, TOKENS), generator=generator) * mask,
            "attention_mask": mask}


def ecg_text_inputs() -> dict[str, torch.Tensor]:
    return {**ecg_inputs(), **text_inputs()}


def kmerl_inputs() -> dict[str, torch.Tensor]:
    return {**ecg_text_inputs(), "entity_labels": torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])}


def ecg_sehr_inputs() -> dict[str, torch.Tensor]:
    return {**ecg_inputs(), **code_inputs("ehr_")}


def sehr_ecg_text_inputs() -> dict[str, torch.Tensor]:
    return {**ecg_inputs(), **code_inputs("ehr_"), **text_inputs()}


# --------------------------------------------------------------------------------------------------- the tester

class CardiommModelTester:
    """transformers-style model tester built from a tiny configuration and an inputs function."""

    def __init__(self, parent: unittest.TestCase, get_config: Callable[[], PretrainedConfig],
                 get_inputs: Callable[[], dict[str, torch.Tensor]], seq_length: int, is_training: bool,
                 expected_num_hidden_layers: int | None = None) -> None:
        self.parent = parent
        self._get_config = get_config
        self._get_inputs = get_inputs
        self.is_training = is_training
        self.batch_size = BATCH
        self.seq_length = seq_length
        config = get_config()
        sizes = getattr(config, "ehr_config", None) or getattr(config, "ecg_config", None) or config
        self.hidden_size = getattr(sizes, "hidden_size", None)
        self.num_hidden_layers = getattr(sizes, "num_hidden_layers", None) or len(getattr(sizes, "stage_depths", []))
        self.num_attention_heads = getattr(sizes, "num_attention_heads", None)
        if expected_num_hidden_layers is not None:
            self.expected_num_hidden_layers = expected_num_hidden_layers

    def get_config(self) -> PretrainedConfig:
        return self._get_config()

    def prepare_config_and_inputs(self) -> tuple[PretrainedConfig, dict[str, torch.Tensor]]:
        return self.get_config(), self._get_inputs()

    def prepare_config_and_inputs_for_common(self) -> tuple[PretrainedConfig, dict[str, torch.Tensor]]:
        return self.prepare_config_and_inputs()


class CardiommModelTest:
    """What a cardiomm model's TestCase declares: its configuration and inputs, the length of its hidden-state
    sequence, how labels look for its heads, and the tests that do not apply (``skipped_tests``) or do not pass
    yet (``known_gaps``), each with its reason."""

    get_config: Callable[[], PretrainedConfig]
    get_inputs: Callable[[], dict[str, torch.Tensor]]
    seq_length: int = 0
    is_training: bool = True
    base_model_classes: tuple[type, ...] = ()  # no training objective: left out of the training tests
    expected_num_hidden_layers: int | None = None  # entries of `hidden_states`, when not num_hidden_layers + 1
    skipped_tests: dict[str, str] = {}
    known_gaps: dict[str, str] = {}

    def setUp(self) -> None:
        reason = self.skipped_tests.get(self._testMethodName) or self.known_gaps.get(self._testMethodName)
        if reason:
            self.skipTest(reason)
        if self._testMethodName.startswith("test_training"):
            # transformers leaves its base models (MODEL_MAPPING) out of these tests; cardiomm's are not listed there
            self.all_model_classes = tuple(c for c in self.all_model_classes if c not in self.base_model_classes)
        self.model_tester = CardiommModelTester(self, type(self).get_config, type(self).get_inputs,
                                                self.seq_length, self.is_training, self.expected_num_hidden_layers)

    def labels_for(self, model_class: type, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:
            inputs.update(self.labels_for(model_class, inputs))
        return inputs


NO_TOKEN_EMBEDDINGS = "does not apply: the input is an ECG signal, not tokens (no input embedding layer)"
COMPOSITE_STATES = ("does not apply: as in transformers' own CLIPModelTest (\"Hidden_states is tested in individual "
                    "model tests\"), a composite model returns its towers' hidden states inside their outputs "
                    "(`ecg_model_output.hidden_states`, `text_model_output.hidden_states`, ...), not at the top "
                    "level; the tower classes run these tests, and test_contrastive_core.py checks that "
                    "output_hidden_states / output_attentions reach the towers")
COMPOSITE_SKIPS = {"test_hidden_states_output": COMPOSITE_STATES,
                   "test_retain_grad_hidden_states_attentions": COMPOSITE_STATES}


class ECGEncoderResNetModelTest(CardiommModelTest, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (ECGEncoderModel, ECGEncoderForSequenceClassification)
    base_model_classes = (ECGEncoderModel,)
    get_config = staticmethod(resnet_config)
    get_inputs = staticmethod(ecg_inputs)
    seq_length = TIME // 2  # of hidden_states[0], the first stride-2 stage's output
    expected_num_hidden_layers = 2  # one per stage (resnet1d_8 has no stem)
    test_resize_embeddings = False
    has_attentions = False  # convolutions
    skipped_tests = {"test_model_get_set_embeddings": NO_TOKEN_EMBEDDINGS}

    def labels_for(self, model_class, inputs):
        if model_class is ECGEncoderForSequenceClassification:
            return {"labels": torch.tensor([0, 2])}
        return {}


class ECGEncoderViTModelTest(ECGEncoderResNetModelTest):
    get_config = staticmethod(vit_config)
    seq_length = LEADS * TIME // 50
    expected_num_hidden_layers = None
    # has_attentions stays False: the ViT uses scaled_dot_product_attention and returns no attention weights
    skipped_tests = {"test_model_get_set_embeddings": NO_TOKEN_EMBEDDINGS}


class ECGEncoderMERLViTModelTest(ECGEncoderResNetModelTest):
    get_config = staticmethod(merl_vit_config)
    seq_length = TIME // 50
    expected_num_hidden_layers = None
    skipped_tests = {"test_model_get_set_embeddings": NO_TOKEN_EMBEDDINGS}


class ECGTextDualEncoderModelTest(CardiommModelTest, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (ECGTextDualEncoder,)
    get_config = staticmethod(ecg_text_config)
    get_inputs = staticmethod(ecg_text_inputs)
    seq_length = TOKENS
    test_resize_embeddings = False  # the vocabulary is the text tower's (its config's vocab_size): resize the tower
    has_attentions = False  # the ECG tower returns no attention weights
    skipped_tests = COMPOSITE_SKIPS


class MERLResNetTextDualEncoderModelTest(ECGTextDualEncoderModelTest):
    get_config = staticmethod(merl_resnet_text_config)


class MERLViTTextDualEncoderModelTest(ECGTextDualEncoderModelTest):
    get_config = staticmethod(merl_vit_text_config)


class KMERLQueryModelTest(ECGTextDualEncoderModelTest):
    all_model_classes = (KMERLQueryModel,)
    get_config = staticmethod(kmerl_config)
    get_inputs = staticmethod(kmerl_inputs)


class SEHRBertModelTest(CardiommModelTest, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (SEHRBertModel, SEHRBertForMaskedLM)
    base_model_classes = (SEHRBertModel,)
    get_config = staticmethod(sehr_bert_config)
    get_inputs = staticmethod(code_inputs)
    seq_length = CODES

    def labels_for(self, model_class, inputs):
        if model_class is SEHRBertForMaskedLM:
            return {"labels": inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)}
        return {}


class SEHRBertClsPoolingModelTest(SEHRBertModelTest):
    get_config = staticmethod(lambda: sehr_bert_config(pooling="cls"))


class ECGSEHRDualEncoderModelTest(CardiommModelTest, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (ECGSEHRDualEncoder,)
    get_config = staticmethod(ecg_sehr_config)
    get_inputs = staticmethod(ecg_sehr_inputs)
    seq_length = CODES
    test_resize_embeddings = False  # the vocabulary is the sEHR tower's (its config's vocab_size): resize the tower
    has_attentions = False  # the ECG tower returns no attention weights
    skipped_tests = COMPOSITE_SKIPS


class SEHRECGTextModelTest(CardiommModelTest, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (SEHRECGTextModel,)
    get_config = staticmethod(sehr_ecg_text_config)
    get_inputs = staticmethod(sehr_ecg_text_inputs)
    seq_length = TOKENS
    test_resize_embeddings = False  # the vocabulary is the text tower's (its config's vocab_size): resize the tower
    has_attentions = False  # the ECG tower returns no attention weights
    skipped_tests = COMPOSITE_SKIPS


# ---------------------------------------------------------------------------------- video encoder and CLERC

FRAMES, FRAME_SIZE, IMAGE_SIZE = 4, 16, 32
CLERC_REPORTS = ("ecg_report", "echo_report", "angiogram_report", "chest_xray_report")


def r2plus1d_config(**overrides) -> R2Plus1DConfig:
    return R2Plus1DConfig(**{"hidden_sizes": [4, 8], "depths": [1, 1], "strides": [1, 2], "stem_width": 3,
                             **overrides})


def clerc_config() -> CLERCMultiEncoderConfig:
    """Every tower tiny; CLIP's text tower with the legacy end-of-text id 2 (pooled at the highest token id)."""
    return CLERCMultiEncoderConfig(
        ecg_config=resnet_config(), echo_config=r2plus1d_config(), angiogram_config=r2plus1d_config(stem_width=5),
        chest_xray_config=CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=8),
        text_config=CLIPTextConfig(vocab_size=TEXT_VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                   num_attention_heads=2, max_position_embeddings=32, pad_token_id=0,
                                   bos_token_id=1, eos_token_id=2),
        projection_dim=16,
    )


def video_inputs() -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(BATCH, 3, FRAMES, FRAME_SIZE, FRAME_SIZE, generator=_generator(3))}


def clerc_inputs() -> dict[str, torch.Tensor]:
    """Every modality for every patient (the masks are checked in test_clerc_model.py); no loss unless the test asks
    for one (`labels_for`), so that outputs compare row by row."""
    generator = _generator(4)
    inputs = {
        "ecg_values": ecg_inputs()["input_values"],
        "echo_values": torch.randn(BATCH, 3, FRAMES, FRAME_SIZE, FRAME_SIZE, generator=generator),
        "angiogram_values": torch.randn(BATCH, 3, FRAMES, FRAME_SIZE, FRAME_SIZE, generator=generator),
        "chest_xray_values": torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "return_loss": False,
    }
    for report in CLERC_REPORTS:
        text = text_inputs()
        inputs[f"{report}_input_ids"] = torch.randint(3, TEXT_VOCAB, (BATCH, TOKENS), generator=generator)
        inputs[f"{report}_attention_mask"] = text["attention_mask"]
    return inputs


NO_VIDEO_EMBEDDINGS = "does not apply: the input is a video, not tokens (no input embedding layer)"
PER_MODALITY_INPUTS = ("does not apply: the mixin calls it with the inputs named input_ids / pixel_values* among the "
                       "model's forward inputs, and CLERC names them per modality (`<report>_input_ids`, "
                       "`echo_values`, ...); test_clerc_model.py checks the feature methods")
CLERC_STATES = ("does not apply: as in transformers' own CLIPModelTest, a composite model returns its towers' hidden "
                "states inside their outputs (`ecg_model_output`, `echo_model_output`, ..., `text_model_output`), "
                "not at the top level; the tower classes run these tests, and test_clerc_model.py checks that "
                "output_hidden_states reaches every tower")


class R2Plus1DVideoModelTest(CardiommModelTest, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (R2Plus1DVideoModel,)
    base_model_classes = (R2Plus1DVideoModel,)
    get_config = staticmethod(r2plus1d_config)
    get_inputs = staticmethod(video_inputs)
    expected_num_hidden_layers = 3  # the stem and each of the two stages
    test_resize_embeddings = False
    has_attentions = False  # convolutions
    skipped_tests = {"test_model_get_set_embeddings": NO_VIDEO_EMBEDDINGS}

    def test_hidden_states_output(self) -> None:
        """As transformers' own CNN tests (ResNet): the stem's and every stage's feature map, (batch, channels,
        frames, height, width), asked for in the call or in the configuration."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        # stem: spatial stride 2; stage 1: stride 1; stage 2: stride 2 in time and space
        expected = [(BATCH, 4, FRAMES, FRAME_SIZE // 2, FRAME_SIZE // 2), (BATCH, 4, FRAMES, FRAME_SIZE // 2,
                    FRAME_SIZE // 2), (BATCH, 8, FRAMES // 2, FRAME_SIZE // 4, FRAME_SIZE // 4)]
        for via_config in (False, True):
            config.output_hidden_states = via_config
            model = R2Plus1DVideoModel(config).eval()
            with torch.no_grad():
                outputs = model(**inputs, **({} if via_config else {"output_hidden_states": True}))
            self.assertEqual([tuple(h.shape) for h in outputs.hidden_states], expected)
            torch.testing.assert_close(outputs.hidden_states[-1], outputs.last_hidden_state)
            torch.testing.assert_close(outputs.pooler_output, outputs.last_hidden_state.mean(dim=(2, 3, 4)))


class CLERCMultiEncoderModelTest(CardiommModelTest, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (CLERCMultiEncoder,)
    get_config = staticmethod(clerc_config)
    get_inputs = staticmethod(clerc_inputs)
    seq_length = TOKENS
    test_resize_embeddings = False  # the vocabulary is the text tower's (its config's vocab_size): resize the tower
    has_attentions = False  # the ECG and video towers return no attention weights
    skipped_tests = {
        **{name: CLERC_STATES for name in COMPOSITE_SKIPS},
        **{name: PER_MODALITY_INPUTS for name in (
            "test_get_text_features_output_0", "test_get_text_features_output_1", "test_get_text_features_output_2",
            "test_get_text_features_hidden_states", "test_get_text_features_attentions",
            "test_get_video_features_output_0", "test_get_video_features_output_1",
            "test_get_video_features_output_2", "test_get_video_features_hidden_states",
            "test_get_video_features_attentions")},
    }

    def labels_for(self, model_class, inputs):
        return {"return_loss": True}


# --------------------------------------------------------------------------- ECG-only self-supervised model

def ecg_ssl_config() -> ECGSelfSupervisedConfig:
    return ECGSelfSupervisedConfig(ecg_config=resnet_config(), projection_dim=16, projection_hidden_size=24)


SSL_STATES = ("does not apply: as in transformers' own CLIPModelTest, the model returns its encoder's hidden states "
              "inside the encoder's output (`ecg_model_output.hidden_states`), not at the top level; "
              "ECGEncoderResNetModelTest runs these tests on the encoder, and test_ecg_ssl_model.py checks that "
              "output_hidden_states reaches it")


class ECGSelfSupervisedModelTest(CardiommModelTest, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (ECGSelfSupervisedModel,)
    get_config = staticmethod(ecg_ssl_config)
    get_inputs = staticmethod(ecg_inputs)
    seq_length = TIME // 2
    test_resize_embeddings = False
    has_attentions = False  # convolutions
    skipped_tests = {"test_model_get_set_embeddings": NO_TOKEN_EMBEDDINGS,
                     **{name: SSL_STATES for name in COMPOSITE_SKIPS}}

    def labels_for(self, model_class, inputs):
        return {"positive_ids": torch.tensor([0, 0])}  # the two rows are views of one ECG: one positive each


# ------------------------------------------------------------------------------------- ECG-MTL multi-task model

def ecg_mtl_config() -> ECGMultiTaskConfig:
    return ECGMultiTaskConfig(ecg_config=resnet_config(), classification_tasks=["af", "lbbb"],
                              regression_tasks=["lvef"], regression_mean=[55.0], regression_std=[10.0],
                              head_hidden_sizes=[8])


class ECGMultiTaskModelTest(CardiommModelTest, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (ECGEncoderForMultiTask,)
    get_config = staticmethod(ecg_mtl_config)
    get_inputs = staticmethod(ecg_inputs)
    seq_length = TIME // 2  # of hidden_states[0], the encoder's first stride-2 stage (returned at the top level)
    expected_num_hidden_layers = 2  # one per stage of the encoder
    test_resize_embeddings = False
    has_attentions = False  # convolutions
    skipped_tests = {"test_model_get_set_embeddings": NO_TOKEN_EMBEDDINGS}

    def labels_for(self, model_class, inputs):
        nan = float("nan")  # one missing target per task kind: masked out of the loss
        return {"classification_labels": torch.tensor([[1.0, nan], [0.0, 1.0]]),
                "regression_labels": torch.tensor([[61.0], [nan]])}
