"""Registration of cardiomm classes with the ``transformers`` Auto classes.

After ``import cardiomm``, ``AutoConfig``/``AutoModel``/``AutoFeatureExtractor``/``AutoProcessor`` resolve
cardiomm checkpoints to the installed classes (no ``trust_remote_code`` needed). Checkpoints also carry their
own code and ``auto_map``, so they load with ``trust_remote_code=True`` where cardiomm is not installed.
"""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoProcessor,
    AutoTokenizer,
)

from .modeling.configuration_clerc import CLERCMultiEncoderConfig
from .modeling.configuration_ecg_encoder import ECGEncoderConfig
from .modeling.configuration_ecg_mtl import ECGMultiTaskConfig
from .modeling.configuration_ecg_sehr import ECGSEHRDualEncoderConfig
from .modeling.configuration_ecg_ssl import ECGSelfSupervisedConfig
from .modeling.configuration_ecg_text import ECGTextDualEncoderConfig
from .modeling.configuration_kmerl import KMERLQueryModelConfig
from .modeling.configuration_r2plus1d import R2Plus1DConfig
from .modeling.configuration_sehr_bert import SEHRBertConfig
from .modeling.configuration_sehr_ecg_text import SEHRECGTextConfig
from .modeling.modeling_clerc import CLERCMultiEncoder
from .modeling.modeling_ecg_encoder import ECGEncoderForSequenceClassification, ECGEncoderModel
from .modeling.modeling_ecg_mtl import ECGEncoderForMultiTask
from .modeling.modeling_ecg_sehr import ECGSEHRDualEncoder
from .modeling.modeling_ecg_ssl import ECGSelfSupervisedModel
from .modeling.modeling_ecg_text import ECGTextDualEncoder
from .modeling.modeling_kmerl import KMERLQueryModel
from .modeling.modeling_r2plus1d import R2Plus1DVideoModel
from .modeling.modeling_sehr_bert import SEHRBertForMaskedLM, SEHRBertModel
from .modeling.modeling_sehr_ecg_text import SEHRECGTextModel
from .processing.feature_extraction_ecg import ECGFeatureExtractor
from .processing.processing_ecg_sehr import ECGSEHRProcessor
from .processing.processing_clerc import CLERCProcessor
from .processing.processing_ecg_text import ECGTextProcessor
from .processing.processing_sehr_ecg_text import SEHRECGTextProcessor
from .processing.tokenization_medical_codes import MedicalCodeTokenizer

#: (model_type, config class) of every cardiomm model.
CONFIGS = (
    (ECGEncoderConfig.model_type, ECGEncoderConfig),
    (ECGTextDualEncoderConfig.model_type, ECGTextDualEncoderConfig),
    (KMERLQueryModelConfig.model_type, KMERLQueryModelConfig),
    (SEHRBertConfig.model_type, SEHRBertConfig),
    (ECGSEHRDualEncoderConfig.model_type, ECGSEHRDualEncoderConfig),
    (SEHRECGTextConfig.model_type, SEHRECGTextConfig),
    (R2Plus1DConfig.model_type, R2Plus1DConfig),
    (CLERCMultiEncoderConfig.model_type, CLERCMultiEncoderConfig),
    (ECGSelfSupervisedConfig.model_type, ECGSelfSupervisedConfig),
    (ECGMultiTaskConfig.model_type, ECGMultiTaskConfig),
)
#: (Auto class, config class, model class).
MODELS = (
    (AutoModel, ECGEncoderConfig, ECGEncoderModel),
    (AutoModelForSequenceClassification, ECGEncoderConfig, ECGEncoderForSequenceClassification),
    (AutoModel, ECGTextDualEncoderConfig, ECGTextDualEncoder),
    (AutoModel, KMERLQueryModelConfig, KMERLQueryModel),
    (AutoModel, SEHRBertConfig, SEHRBertModel),
    (AutoModelForMaskedLM, SEHRBertConfig, SEHRBertForMaskedLM),
    (AutoModel, ECGSEHRDualEncoderConfig, ECGSEHRDualEncoder),
    (AutoModel, SEHRECGTextConfig, SEHRECGTextModel),
    (AutoModel, R2Plus1DConfig, R2Plus1DVideoModel),
    (AutoModel, CLERCMultiEncoderConfig, CLERCMultiEncoder),
    (AutoModel, ECGSelfSupervisedConfig, ECGSelfSupervisedModel),
    (AutoModel, ECGMultiTaskConfig, ECGEncoderForMultiTask),
)


def register_all() -> None:
    """Register every cardiomm config, model and preprocessor with the Auto classes (idempotent)."""
    for model_type, config_class in CONFIGS:
        AutoConfig.register(model_type, config_class, exist_ok=True)
    for auto_class, config_class, model_class in MODELS:
        auto_class.register(config_class, model_class, exist_ok=True)
    AutoFeatureExtractor.register(ECGEncoderConfig, ECGFeatureExtractor, exist_ok=True)
    for config_class in (ECGTextDualEncoderConfig, KMERLQueryModelConfig):
        AutoFeatureExtractor.register(config_class, ECGFeatureExtractor, exist_ok=True)
        AutoProcessor.register(config_class, ECGTextProcessor, exist_ok=True)
    AutoProcessor.register(ECGSEHRDualEncoderConfig, ECGSEHRProcessor, exist_ok=True)
    AutoProcessor.register(SEHRECGTextConfig, SEHRECGTextProcessor, exist_ok=True)
    AutoProcessor.register(CLERCMultiEncoderConfig, CLERCProcessor, exist_ok=True)
    AutoTokenizer.register(SEHRBertConfig, slow_tokenizer_class=MedicalCodeTokenizer, exist_ok=True)
    for config_class in (ECGSEHRDualEncoderConfig, SEHRECGTextConfig, ECGSelfSupervisedConfig, ECGMultiTaskConfig):
        AutoFeatureExtractor.register(config_class, ECGFeatureExtractor, exist_ok=True)
    AutoTokenizer.register(ECGSEHRDualEncoderConfig, slow_tokenizer_class=MedicalCodeTokenizer, exist_ok=True)
    from .hub.custom_pipelines import register_pipelines  # the ecg-classification pipelines

    register_pipelines()


register_all()
