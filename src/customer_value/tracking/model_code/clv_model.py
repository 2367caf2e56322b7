"""MLflow runs this file to build the customer-clv pyfunc model; parameters come from its artifacts."""

import mlflow

from customer_value.tracking.pyfunc import CLVPyfunc

mlflow.models.set_model(CLVPyfunc())
