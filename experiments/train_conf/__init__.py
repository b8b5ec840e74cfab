"""Presets of the train app (experiments/train_conf/train.yaml and its train=<preset> group)."""
