"""Decoder-row upkeep of the trainer: the gradient's parallel part removed, rows at unit norm."""
