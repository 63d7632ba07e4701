"""Datasets: real-dataset converters, the on-disk dataset layout, splits, structured-EHR timelines and pre-training
pairs (the synthetic cohort is :mod:`cardiomm.synthetic`)."""
