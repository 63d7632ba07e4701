"""Experiment files (YAML) shipped with cardiomm; `cardiomm pretrain --config NAME` finds them by name."""
