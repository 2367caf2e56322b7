"""``python -m customer_value.campaign``: the campaign job (``jobs.campaign``) under the name users type."""

from customer_value.jobs.campaign import main
from customer_value.schema import register_configs

if __name__ == "__main__":
    register_configs()
    main()
