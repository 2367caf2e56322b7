"""MLflow: run set-up and logging, the registered pyfunc models, registry and champion gate, model cards."""
