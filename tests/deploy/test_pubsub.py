"""deploy/pubsub.sh builds the queue the code expects (nimbus.bus)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from nimbus import bus
from nimbus.config import Settings
from tests.deploy.conftest import DryRun, RunDry, read_quoted_env, read_yaml_env


def seconds(duration: str) -> float:
    """gcloud's 10s, 10m, 7d as seconds."""
    number, unit = re.fullmatch(r"([\d.]+)([smhd])", duration).groups()  # type: ignore[union-attr]
    return float(number) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def proto_seconds(duration: dict[str, int]) -> float:
    return duration["seconds"] + duration.get("nanos", 0) / 1e9


@pytest.fixture(scope="module")
def settings(env_example: dict[str, str]) -> Settings:
    """What the code running with deploy/env.example's values would expect."""
    return Settings.from_env({**env_example, "GOOGLE_CLOUD_PROJECT": env_example["PROJECT_ID"]})


@pytest.fixture(scope="module")
def expected(settings: Settings) -> dict[str, Any]:
    return bus.worker_subscription(settings)


@pytest.fixture(scope="module", params=["first run", "re-run"])
def dry(request: pytest.FixtureRequest, run_dry: RunDry) -> DryRun:
    """The first run creates; a re-run (everything exists) updates to the same settings."""
    if request.param == "re-run":
        return run_dry("pubsub.sh", DRY_RUN_ASSUME_EXISTING="1")
    return run_dry("pubsub.sh")


def worker_subscription(dry: DryRun, name: str):
    verb = "update" if dry.find("pubsub", "subscriptions", "update") else "create"
    return dry.one("pubsub", "subscriptions", verb, name=name)


def test_topics_are_the_ones_the_code_publishes_to(run_dry: RunDry, settings: Settings):
    created = {c.positionals[-1] for c in run_dry("pubsub.sh").find("pubsub", "topics", "create")}
    assert created == {settings.jobs_topic, settings.dead_letter_topic}
    rerun = run_dry("pubsub.sh", DRY_RUN_ASSUME_EXISTING="1")
    assert not rerun.find("pubsub", "topics", "create")


def test_worker_subscription_matches_the_code(dry: DryRun, expected: dict[str, Any]):
    name = expected["name"].rsplit("/", 1)[1]
    subscription = worker_subscription(dry, name)

    if subscription.is_("pubsub", "subscriptions", "create"):
        assert subscription.flag("topic") == expected["topic"].rsplit("/", 1)[1]
    assert int(subscription.flag("ack-deadline") or 0) == bus.ACK_DEADLINE_SECONDS
    assert expected["ack_deadline_seconds"] == bus.ACK_DEADLINE_SECONDS
    retry = expected["retry_policy"]
    assert seconds(subscription.flag("min-retry-delay") or "") == proto_seconds(
        retry["minimum_backoff"]
    )
    assert seconds(subscription.flag("max-retry-delay") or "") == proto_seconds(
        retry["maximum_backoff"]
    )
    dead_letter = expected["dead_letter_policy"]
    assert subscription.flag("dead-letter-topic") == dead_letter["dead_letter_topic"]
    assert (
        int(subscription.flag("max-delivery-attempts") or 0) == dead_letter["max_delivery_attempts"]
    )
    assert dead_letter["max_delivery_attempts"] == 5
    assert subscription.flag("retain-acked-messages") == ""
    assert expected["retain_acked_messages"] is True
    assert seconds(subscription.flag("message-retention-duration") or "") == proto_seconds(
        expected["message_retention_duration"]
    )
    assert seconds(subscription.flag("message-retention-duration") or "") == 7 * 86400
    # An idle subscription must not expire after 31 days and take the queue with it.
    assert subscription.flag("expiration-period") == "never"


def test_dead_letter_topic_has_the_workers_subscription(dry: DryRun, settings: Settings):
    subscription = worker_subscription(dry, settings.dead_letter_subscription)
    if subscription.is_("pubsub", "subscriptions", "create"):
        assert subscription.flag("topic") == settings.dead_letter_topic
    assert int(subscription.flag("ack-deadline") or 0) == bus.ACK_DEADLINE_SECONDS


def test_pubsub_service_agent_may_dead_letter(dry: DryRun, settings: Settings):
    agent = re.compile(r"serviceAccount:service-\w+@gcp-sa-pubsub\.iam\.gserviceaccount\.com")
    publish = dry.one("pubsub", "topics", "add-iam-policy-binding", name=settings.dead_letter_topic)
    assert agent.fullmatch(publish.flag("member") or "")
    assert publish.flag("role") == "roles/pubsub.publisher"
    acks = [
        c
        for c in dry.find("pubsub", "subscriptions", "add-iam-policy-binding")
        if settings.jobs_subscription in c.positionals and agent.fullmatch(c.flag("member") or "")
    ]
    assert [c.flag("role") for c in acks] == ["roles/pubsub.subscriber"]


def test_each_component_gets_only_its_part_of_the_queue(dry: DryRun, settings: Settings):
    grants = {
        (c.positionals[-1], (c.flag("member") or "").split(":")[1].split("@")[0], c.flag("role"))
        for c in dry.find("pubsub", "topics", "add-iam-policy-binding")
        + dry.find("pubsub", "subscriptions", "add-iam-policy-binding")
        if "gcp-sa-pubsub" not in (c.flag("member") or "")
    }
    assert grants == {
        (settings.jobs_topic, "nimbus-batch-submit", "roles/pubsub.publisher"),
        # batch_submit's /ready reads the topic (JobBus.is_reachable)
        (settings.jobs_topic, "nimbus-batch-submit", "roles/pubsub.viewer"),
        (settings.jobs_topic, "nimbus-vm", "roles/pubsub.publisher"),
        (settings.jobs_subscription, "nimbus-vm", "roles/pubsub.subscriber"),
        (settings.dead_letter_subscription, "nimbus-vm", "roles/pubsub.subscriber"),
    }


def test_publisher_and_worker_are_given_these_names(
    run_dry: RunDry, settings: Settings, env_example: dict[str, str]
):
    functions = run_dry("functions.sh")
    submit = functions.one("functions", "deploy", name="batch_submit")
    submit_env = read_yaml_env(Path(submit.flag("env-vars-file") or ""))
    assert submit_env["NIMBUS_JOBS_TOPIC"] == settings.jobs_topic
    assert submit_env["GOOGLE_CLOUD_PROJECT"] == env_example["PROJECT_ID"]

    vm = run_dry("vm.sh")
    worker_env = read_quoted_env(vm.build_dir / "vm" / "nimbus.env")
    assert worker_env["NIMBUS_JOBS_SUBSCRIPTION"] == settings.jobs_subscription
    assert worker_env["NIMBUS_DEAD_LETTER_SUBSCRIPTION"] == settings.dead_letter_subscription
    assert worker_env["NIMBUS_JOBS_TOPIC"] == settings.jobs_topic
    assert worker_env["GOOGLE_CLOUD_PROJECT"] == env_example["PROJECT_ID"]
