"""The models: BTYD purchase and spend models for value and churn (``clv``); segmentations (``segments``)."""
