"""Pipeline stages: one module per stage, plain functions from paths and typed params to paths.

Only this package (and ``flows/``) may import mlflow, dvc or prefect; ``ssl_core``
stays pure PyTorch.
"""
