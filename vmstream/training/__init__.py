"""Offline training: datasets, samplers, augmentation, recipes, engine."""
