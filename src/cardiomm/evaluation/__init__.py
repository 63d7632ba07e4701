"""Evaluation: zero-shot classification, linear probing, retrieval, plots."""
