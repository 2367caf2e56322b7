"""Judging models: holdout metrics and baselines, rolling-origin backtests, figures for reviewers."""
