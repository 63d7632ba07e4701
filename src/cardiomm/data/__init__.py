"""Datasets: the synthetic cohort, real-dataset converters, splits and on-disk layout."""
