"""Preprocessing that travels with checkpoints: feature extractors, tokenizers and processors.

Same dependency rule as ``cardiomm.modeling``: torch/numpy/scipy/transformers (and lazily wfdb) only, and
single-dot sibling imports.
"""
