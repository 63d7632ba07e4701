"""cardiomm: cardiac multimodal representation learning for the Hugging Face ecosystem.

Every configuration, model, feature extractor, tokenizer and processor class is importable from the top level
(``from cardiomm import ECGEncoderModel, ECGFeatureExtractor``), and importing :mod:`cardiomm` registers them with
the ``transformers`` Auto classes (``AutoConfig``, ``AutoModel``, ``AutoFeatureExtractor``, ``AutoTokenizer``,
``AutoProcessor``, ...). The registration needs the classes themselves, so they are imported eagerly: the
top-level names cost nothing beyond ``import cardiomm``.
"""

__version__ = "0.1.0"

from . import auto as _auto  # noqa: F401  (registration with the Auto classes)
from .modeling.configuration_clerc import CLERCMultiEncoderConfig
from .modeling.configuration_ecg_contrastive import ECGContrastiveConfig, ECGDualEncoderConfig
from .modeling.configuration_ecg_encoder import ECGEncoderConfig
from .modeling.configuration_ecg_mtl import ECGMultiTaskConfig
from .modeling.configuration_ecg_sehr import ECGSEHRDualEncoderConfig
from .modeling.configuration_ecg_ssl import ECGSelfSupervisedConfig
from .modeling.configuration_ecg_text import ECGTextDualEncoderConfig
from .modeling.configuration_kmerl import KMERLQueryModelConfig
from .modeling.configuration_r2plus1d import R2Plus1DConfig
from .modeling.configuration_sehr_bert import SEHRBertConfig
from .modeling.configuration_sehr_ecg_text import SEHRECGTextConfig
from .modeling.modeling_clerc import CLERCMultiEncoder, CLERCOutput
from .modeling.modeling_ecg_encoder import (
    ECGEncoderForSequenceClassification,
    ECGEncoderModel,
    ECGEncoderOutput,
    ECGEncoderPreTrainedModel,
    ECGSequenceClassifierOutput,
)
from .modeling.modeling_ecg_contrastive import ECGContrastiveModel, ECGContrastivePreTrainedModel, ECGDualEncoderModel
from .modeling.modeling_ecg_sehr import ECGSEHRDualEncoder, ECGSEHROutput
from .modeling.modeling_ecg_mtl import ECGEncoderForMultiTask, ECGMultiTaskOutput
from .modeling.modeling_ecg_ssl import ECGSelfSupervisedModel, ECGSelfSupervisedOutput
from .modeling.modeling_ecg_text import ECGTextDualEncoder, ECGTextOutput
from .modeling.modeling_kmerl import KMERLQueryModel, KMERLQueryOutput
from .modeling.modeling_r2plus1d import R2Plus1DPreTrainedModel, R2Plus1DVideoModel
from .modeling.modeling_sehr_bert import SEHRBertForMaskedLM, SEHRBertModel, SEHRBertPreTrainedModel
from .modeling.modeling_sehr_ecg_text import SEHRECGTextModel, SEHRECGTextOutput
from .processing.feature_extraction_ecg import ECGFeatureExtractor
from .processing.image_processing_chest_xray import ChestXrayImageProcessor
from .processing.processing_clerc import CLERCProcessor
from .processing.processing_ecg_text import ECGTextProcessor
from .processing.processing_ecg_sehr import ECGSEHRProcessor
from .processing.processing_sehr_ecg_text import SEHRECGTextProcessor
from .processing.tokenization_medical_codes import MedicalCodeTokenizer
from .processing.video_processing_cardiac import CardiacVideoProcessor

__all__ = [
    # configurations
    "ECGEncoderConfig",
    "ECGContrastiveConfig",
    "ECGDualEncoderConfig",
    "ECGTextDualEncoderConfig",
    "KMERLQueryModelConfig",
    "ECGSEHRDualEncoderConfig",
    "SEHRBertConfig",
    "SEHRECGTextConfig",
    "R2Plus1DConfig",
    "CLERCMultiEncoderConfig",
    "ECGSelfSupervisedConfig",
    "ECGMultiTaskConfig",
    # ECG encoders
    "ECGEncoderPreTrainedModel",
    "ECGEncoderModel",
    "ECGEncoderForSequenceClassification",
    "ECGEncoderOutput",
    "ECGSequenceClassifierOutput",
    # ECG-only self-supervised contrastive model
    "ECGSelfSupervisedModel",
    "ECGSelfSupervisedOutput",
    # supervised multi-task ECG model (ECG-MTL)
    "ECGEncoderForMultiTask",
    "ECGMultiTaskOutput",
    # contrastive dual encoders (ECG-text, ECG-sEHR) and the sEHR-ECG-text model
    "ECGContrastivePreTrainedModel",
    "ECGContrastiveModel",
    "ECGDualEncoderModel",
    "ECGTextDualEncoder",
    "ECGTextOutput",
    "KMERLQueryModel",
    "KMERLQueryOutput",
    "ECGSEHRDualEncoder",
    "ECGSEHROutput",
    "SEHRECGTextModel",
    "SEHRECGTextOutput",
    # video encoder and the CLERC multimodal model
    "R2Plus1DPreTrainedModel",
    "R2Plus1DVideoModel",
    "CLERCMultiEncoder",
    "CLERCOutput",
    # structured EHR
    "SEHRBertPreTrainedModel",
    "SEHRBertModel",
    "SEHRBertForMaskedLM",
    # preprocessing
    "ECGFeatureExtractor",
    "ECGTextProcessor",
    "ECGSEHRProcessor",
    "SEHRECGTextProcessor",
    "MedicalCodeTokenizer",
    "CardiacVideoProcessor",
    "ChestXrayImageProcessor",
    "CLERCProcessor",
]
