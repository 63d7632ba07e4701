"""Model definitions (configuration_*.py / modeling_*.py pairs).

Files here import only torch, numpy, scipy and transformers, plus their own siblings through single-dot
imports, so that ``save_pretrained`` can copy them flat into a checkpoint that loads without cardiomm.
"""
