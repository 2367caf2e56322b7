"""``python -m customer_value.monitor``: the monitoring job (``jobs.monitor``) under the name users type."""

from customer_value.jobs.monitor import main
from customer_value.schema import register_configs

if __name__ == "__main__":
    register_configs()
    main()
