"""Scoring a model: predictions on files and datasets, metrics with intervals, reports, shortcut and attention checks."""
