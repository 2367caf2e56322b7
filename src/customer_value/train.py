"""``python -m customer_value.train``: the training job (``jobs.train``) under the name users type."""

from customer_value.jobs.train import main
from customer_value.schema import register_configs

if __name__ == "__main__":
    register_configs()
    main()
