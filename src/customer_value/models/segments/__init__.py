"""Behavioural segments: clusterers, choosing k, distinctness, stability, names, attributes, migration."""
