"""`python -m mlflow_server`: the MLflow tracking server from Nimbus's settings."""

from mlflow_server.server import main

main()
