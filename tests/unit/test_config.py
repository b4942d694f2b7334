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


def test_limits_and_keys_default_to_open():
    settings = Settings.from_env({})

    assert settings.api_keys == ""
    assert settings.rate_limit == 0
    assert settings.max_json_depth == 32


def test_a_rate_limit_of_zero_is_off_and_negative_is_refused():
    assert Settings.from_env({"NIMBUS_RATE_LIMIT": "0"}).rate_limit == 0
    assert Settings.from_env({"NIMBUS_RATE_LIMIT": "600"}).rate_limit == 600
    with pytest.raises(ConfigError, match="NIMBUS_RATE_LIMIT"):
        Settings.from_env({"NIMBUS_RATE_LIMIT": "-1"})


@pytest.mark.parametrize(
    "value",
    [
        "alice",  # no digest
        "alice:1234",  # too short
        "nimbus_gOZ6jdB8ExcwQuAOQA13Z_570GLmm2wD7D50b1sSe2c",  # a key itself, not its digest
        "bad name:" + "a" * 64,
    ],
)
def test_a_malformed_api_keys_entry_fails_at_start(value):
    with pytest.raises(ConfigError, match="NIMBUS_API_KEYS") as raised:
        Settings.from_env({"NIMBUS_API_KEYS": value})

    assert "gOZ6" not in str(raised.value)  # never echo what may be a secret
