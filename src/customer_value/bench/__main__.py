"""``python -m customer_value.bench``: see ``compare``."""

from customer_value.bench.compare import main

if __name__ == "__main__":
    main()
