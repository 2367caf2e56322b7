"""Reading transaction logs, parsing and bad rows, grouping, and the one-row-per-customer table."""
