"""What a CRM syncs from a scoring: a membership table with segment ids that stay stable across retrains,
and the change set since the previous scoring."""
