"""Evaluation: judged datasets (BEIR/TREC) in and out, metrics, experiments, depth curves, reports."""
