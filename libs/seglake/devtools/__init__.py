"""Developer tooling: the synthetic data generator, the local standalone cluster and the local Kafka broker. Not imported by core or stages."""
