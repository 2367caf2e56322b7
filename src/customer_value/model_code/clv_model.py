"""MLflow runs this file to build the customer-clv pyfunc model; parameters come from its artifacts."""

import mlflow

from customer_value.pyfunc_models import CLVPyfunc

mlflow.models.set_model(CLVPyfunc())
