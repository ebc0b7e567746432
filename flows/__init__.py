"""Prefect flows: thin compositions of the pipeline stages."""
