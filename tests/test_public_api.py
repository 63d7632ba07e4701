"""The top-level API: ``from cardiomm import ...`` gives every config, model and preprocessor class, and
``import cardiomm`` alone registers them with the ``transformers`` Auto classes. Checked in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

# Classes the README and the model docs name; every other public config / model / processor is in __all__ too.
DOCUMENTED = [
    "ECGEncoderConfig", "ECGEncoderModel", "ECGEncoderForSequenceClassification", "ECGFeatureExtractor",
    "ECGTextDualEncoderConfig", "ECGTextDualEncoder", "ECGTextProcessor", "MedicalCodeTokenizer",
    "SEHRBertConfig", "SEHRBertModel", "SEHRBertForMaskedLM", "ECGSEHRDualEncoderConfig", "ECGSEHRDualEncoder",
    "SEHRECGTextConfig", "SEHRECGTextModel",
]

_PROBE = textwrap.dedent(
    """
    import importlib, json, sys
    import cardiomm
    from cardiomm import ECGEncoderModel, ECGFeatureExtractor, ECGTextDualEncoder, MedicalCodeTokenizer, SEHRBertModel

    report = {"all": list(cardiomm.__all__), "dir": dir(cardiomm), "not_same": [], "missing_in_all": []}
    for name in cardiomm.__all__:
        obj = getattr(cardiomm, name)
        home = importlib.import_module(obj.__module__)
        if getattr(home, name, None) is not obj:
            report["not_same"].append(name)
    # every public class of the portable modules that is a config, a model or a preprocessor is exported
    from transformers import FeatureExtractionMixin, PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
    from transformers import ProcessorMixin
    kinds = (PreTrainedConfig, PreTrainedModel, FeatureExtractionMixin, PreTrainedTokenizerBase, ProcessorMixin)
    for package in ("cardiomm.modeling", "cardiomm.processing"):
        import pkgutil
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
            module = importlib.import_module(f"{package}.{info.name}")
            for name in getattr(module, "__all__", ()):
                obj = getattr(module, name)
                if isinstance(obj, type) and issubclass(obj, kinds) and name not in cardiomm.__all__:
                    report["missing_in_all"].append(f"{module.__name__}.{name}")

    # Auto classes resolve after `import cardiomm` alone (no trust_remote_code, no cardiomm import in the call)
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForMaskedLM, AutoTokenizer
    config = AutoConfig.for_model("ecg_encoder", backbone="resnet1d_8")
    report["auto_config"] = type(config).__name__
    model = AutoModel.from_config(config)
    report["auto_model"] = type(model).__name__
    out = sys.argv[1]
    model.save_pretrained(out)
    ECGFeatureExtractor(sampling_rate=500, crop_length=2500).save_pretrained(out)
    report["auto_from_pretrained"] = type(AutoModel.from_pretrained(out)).__name__
    report["auto_feature_extractor"] = type(AutoFeatureExtractor.from_pretrained(out)).__name__
    bert = AutoConfig.for_model("sehr_bert", vocab_size=16, hidden_size=8, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=16)
    report["auto_mlm"] = type(AutoModelForMaskedLM.from_config(bert)).__name__
    tok = MedicalCodeTokenizer(vocab=["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "DX10:I48"])
    tok.save_pretrained(out + "-tok")
    bert.save_pretrained(out + "-tok")
    report["auto_tokenizer"] = type(AutoTokenizer.from_pretrained(out + "-tok")).__name__
    print(json.dumps(report))
    """
)


def test_top_level_exports_and_auto_registration(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / "encoder")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(DOCUMENTED) <= set(report["all"])
    assert len(report["all"]) == len(set(report["all"]))
    assert set(report["all"]) <= set(report["dir"])
    assert report["not_same"] == []
    assert report["missing_in_all"] == []
    assert report["auto_config"] == "ECGEncoderConfig"
    assert report["auto_model"] == report["auto_from_pretrained"] == "ECGEncoderModel"
    assert report["auto_feature_extractor"] == "ECGFeatureExtractor"
    assert report["auto_mlm"] == "SEHRBertForMaskedLM"
    assert report["auto_tokenizer"] == "MedicalCodeTokenizer"
