"""MLflow runs this file to build the customer-segments pyfunc model; the pipeline is an artifact."""

import mlflow

from customer_value.tracking.pyfunc import SegmentsPyfunc

mlflow.models.set_model(SegmentsPyfunc())
