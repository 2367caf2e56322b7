"""``python -m customer_value.score``: the scoring job (``jobs.score``) under the name users type."""

from customer_value.jobs.score import main
from customer_value.schema import register_configs

if __name__ == "__main__":
    register_configs()
    main()
