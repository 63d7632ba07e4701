"""ECG statement knowledge base and prompt building for zero-shot classification."""

from .knowledge_base import (
    CATEGORIES,
    KnowledgeBase,
    KnowledgeEntry,
    LabelSet,
    load_knowledge_base,
    normalize_term,
)
from .prompts import (
    CONNECTIVE_WORDS,
    PROMPT_STYLES,
    ClinicalPrompt,
    TextGenerationRephraser,
    build_clinical_prompt,
    clinical_terms,
    entry_prompts,
    found_terms,
    get_prompts,
    load_prompts,
    save_prompts,
    select_prompts,
    template_prompt,
    verify_prompt,
)

__all__ = [
    "CATEGORIES",
    "CONNECTIVE_WORDS",
    "PROMPT_STYLES",
    "ClinicalPrompt",
    "KnowledgeBase",
    "KnowledgeEntry",
    "LabelSet",
    "TextGenerationRephraser",
    "build_clinical_prompt",
    "clinical_terms",
    "entry_prompts",
    "found_terms",
    "get_prompts",
    "load_knowledge_base",
    "load_prompts",
    "normalize_term",
    "save_prompts",
    "select_prompts",
    "template_prompt",
    "verify_prompt",
]
