"""Lifetime value and churn: BTYD likelihoods and fitters, the CLV estimator, learned layers, intervals."""
