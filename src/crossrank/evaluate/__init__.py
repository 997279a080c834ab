"""Evaluation: metrics, experiments, depth curves, reports."""
