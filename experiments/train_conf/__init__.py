"""Presets of the train app (conf/train.yaml puts this package on its Hydra search path: train=<preset>)."""
