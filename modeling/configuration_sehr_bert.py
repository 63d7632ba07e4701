"""Configuration of sEHR-BERT, the BERT encoder of structured-EHR code sequences (Lalam et al., Section 3.1).

Defaults are the paper's: 5 layers, hidden size 320, 5 attention heads, feed-forward 4 x 320, sequences of up to
512 codes, a vocabulary of 28,593 codes (28,600 once padded to a multiple of 8). The vocabulary size, the time
table and the code types must match the :class:`MedicalCodeTokenizer` the model is used with
(``SEHRBertConfig.from_tokenizer`` copies them).
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import PreTrainedConfig

SEHR_BERT_POOLING: tuple[str, ...] = ("mean", "cls")


class SEHRBertConfig(PreTrainedConfig):
    r"""
    Configuration of [`SEHRBertModel`] and [`SEHRBertForMaskedLM`].

    Args:
        vocab_size (`int`, defaults to 28600): Number of code tokens (the tokenizer's `len`).
        hidden_size (`int`, defaults to 320): Width of the embeddings and encoder layers.
        num_hidden_layers (`int`, defaults to 5): Transformer layers.
        num_attention_heads (`int`, defaults to 5): Attention heads per layer.
        intermediate_size (`int`, *optional*): Feed-forward width; defaults to `4 * hidden_size`.
        hidden_act (`str`, defaults to `"gelu"`): Feed-forward activation.
        hidden_dropout_prob (`float`, defaults to 0.1): Dropout on embeddings and sub-layer outputs.
        attention_probs_dropout_prob (`float`, defaults to 0.1): Dropout on attention probabilities.
        max_position_embeddings (`int`, defaults to 512): Longest sequence, `[CLS]` and `[SEP]` included.
        use_position_embeddings (`bool`, defaults to `True`): Add learned position embeddings (the BERT
            implementation of `transformers` the paper builds on has them; the paper names only code, time and
            type embeddings). Set to `False` for order information from the time embeddings alone.
        max_time_weeks (`int`, defaults to 520): Time ids lie in `[0, 2 * max_time_weeks]` (see the tokenizer).
        num_time_buckets (`int`, *optional*): Rows of the time-embedding table; `2 * max_time_weeks + 1`.
        num_code_types (`int`, defaults to 8): Rows of the code-type embedding table (the tokenizer uses 5:
            special, diagnosis, symptom, procedure, medication; the rest are free for new types).
        pooling (`str`, defaults to `"mean"`): `pooler_output` is the mean of the final states of the non-padding
            tokens (`"mean"`, the global average pooling the paper feeds to its projection heads) or BERT's pooler,
            a dense + tanh layer on the `[CLS]` state (`"cls"`).
        sparse_prediction (`bool`, defaults to `False`): With `labels`, [`SEHRBertForMaskedLM`] runs the MLM head on
            the labelled (masked) positions only and returns their logits, shape (num_labelled, vocab_size), instead
            of logits for every position; the loss is the same. Use it for pre-training (about 7x less head work
            at 15 % masking).
        initializer_range (`float`, defaults to 0.02): Std of the normal init of linear layers and embeddings.
        layer_norm_eps (`float`, defaults to 1e-12): LayerNorm epsilon.
        pad_token_id (`int`, defaults to 0): Id of `[PAD]` (its code embedding starts at zero).
        tie_word_embeddings (`bool`, defaults to `True`): Share the MLM decoder weights with the code embeddings.

    Example:

    ```python
    >>> config = SEHRBertConfig.from_tokenizer(tokenizer, num_hidden_layers=2)
    >>> model = SEHRBertForMaskedLM(config)
    ```
    """

    model_type: ClassVar[str] = "sehr_bert"
    attribute_map: ClassVar[dict[str, str]] = {"type_vocab_size": "num_code_types"}

    vocab_size: int = 28600
    hidden_size: int = 320
    num_hidden_layers: int = 5
    num_attention_heads: int = 5
    intermediate_size: int | None = None
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    use_position_embeddings: bool = True
    max_time_weeks: int = 520
    num_time_buckets: int | None = None
    num_code_types: int = 8
    pooling: str = "mean"
    sparse_prediction: bool = False
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = True
    # fields the reused BERT layers read
    is_decoder: bool = False
    add_cross_attention: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.num_time_buckets is None:
            self.num_time_buckets = 2 * self.max_time_weeks + 1
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self) -> None:
        """Check that the fields describe a buildable encoder."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if self.num_time_buckets < 2 * self.max_time_weeks + 1:
            raise ValueError(
                f"num_time_buckets ({self.num_time_buckets}) must be at least 2 * max_time_weeks + 1 "
                f"({2 * self.max_time_weeks + 1})."
            )
        if self.pooling not in SEHR_BERT_POOLING:
            raise ValueError(f"pooling must be one of {SEHR_BERT_POOLING}, got {self.pooling!r}.")
        if self.is_decoder or self.add_cross_attention:
            raise ValueError("sEHR-BERT is a bidirectional encoder: is_decoder and add_cross_attention must be False.")

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> SEHRBertConfig:
        """A config whose vocabulary size, time table, pad id and sequence length match `tokenizer`."""
        values = {
            "vocab_size": len(tokenizer),
            "max_time_weeks": tokenizer.max_time_weeks,
            "pad_token_id": tokenizer.pad_token_id,
            "max_position_embeddings": min(int(tokenizer.model_max_length), 4096),
        }
        values.update(kwargs)
        return cls(**values)


__all__ = ["SEHRBertConfig", "SEHR_BERT_POOLING"]

SEHRBertConfig.register_for_auto_class()
