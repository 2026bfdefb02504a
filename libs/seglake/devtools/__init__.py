"""Developer tooling: the synthetic data generator and the local standalone cluster. Not imported by core or stages."""
