"""MLflow runs this file to build the customer-segments pyfunc model; the pipeline is an artifact."""

import mlflow

from customer_value.pyfunc_models import SegmentsPyfunc

mlflow.models.set_model(SegmentsPyfunc())
