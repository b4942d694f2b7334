from __future__ import annotations

import pytest

from nimbus.config import Settings
from nimbus.errors import ConfigError


def test_defaults_are_the_local_stack():
    settings = Settings.from_env({})

    assert settings.model_uri == "models:/iris@production"
    assert settings.model_name == "iris"
    assert settings.topic_path == "projects/nimbus-local/topics/nimbus-jobs"


def test_environment_overrides_defaults():
    settings = Settings.from_env({"NIMBUS_MODEL_URI": "models:/diabetes/3", "NIMBUS_PORT": "9000"})

    assert settings.model_name == "diabetes"
    assert settings.port == 9000


@pytest.mark.parametrize(
    ("name", "value"),
    [("NIMBUS_PORT", "eighty"), ("NIMBUS_LEASE_SECONDS", "0"), ("NIMBUS_LOG_LEVEL", "LOUD")],
)
def test_a_bad_value_names_its_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_sqlite_backend_lives_under_home(tmp_path):
    settings = Settings.from_env({"NIMBUS_HOME": str(tmp_path)})

    assert settings.backend_store_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"


def test_a_postgres_backend_passes_through():
    uri = "postgresql://mlflow:secret@10.0.0.3:5432/mlflow"

    assert Settings.from_env({"NIMBUS_MLFLOW_BACKEND_URI": uri}).backend_store_uri == uri
