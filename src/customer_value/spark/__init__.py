"""The Spark engine: customer features and champion scoring on a cluster (``engine=spark``)."""
