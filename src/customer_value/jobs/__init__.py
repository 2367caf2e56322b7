"""The jobs users run: train (its CLV and segments stages), score, sweeps, the team server, shape report."""
