"""Evaluation: metrics, held-out and by-source evaluations, baselines, attacks, report printing, plots."""
