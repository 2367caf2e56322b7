"""Campaigns that test and learn: an audience chosen by rules over a scoring output, a standing global
holdout, treatment and control arms by a keyed hash, the size a lift needs, and the lists per arm."""
