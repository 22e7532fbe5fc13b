"""The operations the CLI and the REST API share: train, load, sample (and later diagnose)."""
