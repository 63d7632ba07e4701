"""ECG statement knowledge base and prompt building for zero-shot classification."""
