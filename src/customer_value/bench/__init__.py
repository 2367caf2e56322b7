"""``make bench``: the project's path beside plain lifetimes / scikit-learn, as ratios."""
