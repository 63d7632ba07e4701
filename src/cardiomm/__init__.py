"""cardiomm: cardiac multimodal representation learning for the Hugging Face ecosystem.

Importing :mod:`cardiomm` registers every cardiomm configuration, model, feature extractor, tokenizer and
processor with the ``transformers`` Auto classes.
"""

__version__ = "0.1.0"

from . import auto as _auto  # noqa: F401  (registration side effect)
