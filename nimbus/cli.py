"""The `nimbus` command."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from nimbus.client import ApiError, NimbusClient
from nimbus.config import Settings, documented_variables
from nimbus.errors import ConfigError


@click.group()
def main() -> None:
    """Nimbus: serve an MLflow-registered model on Google Cloud, or locally with `nimbus up`."""


@main.command()
@click.option("--port", type=int, default=None, help="Gateway port (default NIMBUS_PORT or 8080).")
@click.option(
    "--workers", type=int, default=None, help="Worker processes (default NIMBUS_WORKERS or 1)."
)
def up(port: int | None, workers: int | None) -> None:
    """Run the whole local stack in the foreground until Ctrl-C or SIGTERM."""
    from dataclasses import replace

    from nimbus.stack import Stack, StackError

    logging.basicConfig(level=logging.INFO, format="nimbus up: %(message)s")
    try:
        settings = Settings.from_env()
        if port is not None:
            settings = replace(settings, port=port)
        if workers is not None:
            settings = replace(settings, workers=workers)
        stack = Stack(settings)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        stack.start()
        click.echo("Nimbus is up. Logs and data are in " + str(stack.home))
        for name, url in stack.urls().items():
            click.echo(f"  {name:<13} {url}")
        click.echo(f"Try: curl {stack.gateway_url}/   (Ctrl-C stops everything)")
        stack.supervise(stop)
    except (StackError, ConfigError) as error:
        click.echo(f"nimbus up: {error}", err=True)
        sys.exit(1)
    finally:
        click.echo("stopping...", err=True)
        stack.stop()
        click.echo("stopped.", err=True)


@main.group()
def model() -> None:
    """Train, promote and list registered models (the local stack's registry by default)."""


tracking_option = click.option(
    "--tracking-uri",
    default=None,
    help="MLflow server; default: the running local stack's, else MLFLOW_TRACKING_URI.",
)


@model.command("train")
@click.option(
    "--dataset", type=click.Choice(["iris", "diabetes"]), default="iris", show_default=True
)
@click.option("--name", default=None, help="Registered model name (default: the dataset's).")
@click.option("--alias", default="production", show_default=True, help="Alias to move to it.")
@click.option("--no-alias", is_flag=True, help="Register the version without moving any alias.")
@tracking_option
def model_train(
    dataset: str, name: str | None, alias: str, no_alias: bool, tracking_uri: str | None
) -> None:
    """Train on a dataset bundled with scikit-learn and register a new version."""
    uri = _tracking_uri(tracking_uri)
    try:
        from mlflow_server.train import train_and_register
    except ImportError as error:
        raise click.ClickException(
            f"Training needs the server extra (full mlflow): {error}. Run `make install`."
        ) from None
    version = train_and_register(
        uri, dataset=dataset, model_name=name, alias=None if no_alias else alias
    )
    target = "" if no_alias else f" and moved @{alias} to it"
    click.echo(f"registered {name or dataset} version {version}{target}")


@model.command("promote")
@click.argument("name")
@click.argument("version")
@click.option("--alias", default="production", show_default=True)
@tracking_option
def model_promote(name: str, version: str, alias: str, tracking_uri: str | None) -> None:
    """Point NAME@ALIAS at VERSION; every running process serves it within seconds."""
    from mlflow.exceptions import MlflowException

    client = _mlflow_client(tracking_uri)
    try:
        client.get_model_version(name, version)
    except MlflowException as error:
        raise click.ClickException(
            f"No version {version} of model {name!r}: {error.message}"
        ) from None
    try:
        previous = client.get_model_version_by_alias(name, alias).version
    except MlflowException:
        previous = None
    client.set_registered_model_alias(name, alias, version)
    was = f" (was {previous})" if previous else ""
    click.echo(f"{name}@{alias} -> version {version}{was}")


@model.command("list")
@click.argument("name", required=False)
@tracking_option
def model_list(name: str | None, tracking_uri: str | None) -> None:
    """Versions and aliases, and which version each running local component serves."""
    client = _mlflow_client(tracking_uri)
    names = [name] if name else [m.name for m in client.search_registered_models()]
    for model_name in names:
        click.echo(model_name)
        # Version searches leave aliases out; the registered model maps alias -> version.
        by_version: dict[str, list[str]] = {}
        for alias, aliased in (client.get_registered_model(model_name).aliases or {}).items():
            by_version.setdefault(str(aliased), []).append(f"@{alias}")
        versions = client.search_model_versions(f"name = '{model_name}'")
        for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
            aliases = ", ".join(sorted(by_version.get(str(version.version), []))) or "-"
            click.echo(f"  version {version.version:<5} {aliases:<16} {version.status}")
    served = _served_locally()
    if served:
        click.echo("served by the local stack:")
        for component, what in served.items():
            click.echo(f"  {component:<28} {what}")


def _local_stack() -> dict[str, Any] | None:
    """The running local stack's state file (`nimbus up` writes it), if there is one."""
    path = Path(Settings.from_env().home) / "stack.json"
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state


def _adopt_local_stack() -> dict[str, Any] | None:
    """While a local stack runs for this NIMBUS_HOME, talk to it: point the client libraries
    at its emulators. (Give another NIMBUS_HOME, or --tracking-uri, to reach elsewhere.)"""
    stack = _local_stack()
    if stack is not None:
        os.environ["STORAGE_EMULATOR_HOST"] = stack["urls"]["gcs"]
        os.environ["PUBSUB_EMULATOR_HOST"] = stack["urls"]["pubsub"]
    return stack


def _tracking_uri(option: str | None) -> str:
    """--tracking-uri, else the running local stack's MLflow, else MLFLOW_TRACKING_URI."""
    if option:
        return option
    stack = _adopt_local_stack()
    if stack is not None:
        return str(stack["urls"]["mlflow"])
    return Settings.from_env().tracking_uri


def _mlflow_client(option: str | None) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=_tracking_uri(option))


def _served_locally() -> dict[str, str]:
    """{component: "name/version"} from the local stack's predict /ready and worker heartbeats."""
    stack = _local_stack()
    if stack is None:
        return {}
    served: dict[str, str] = {}
    ready_url = stack["urls"]["predict"] + "/ready"
    try:
        with urllib.request.urlopen(ready_url, timeout=5) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = json.loads(error.read() or b"{}")
    except OSError as error:
        body = {"error": {"message": str(error)}}
    loaded = body.get("model") or {}
    served["predict"] = (
        f"{loaded['name']}/{loaded['version']}" if loaded else f"no model ({body.get('error')})"
    )
    import redis

    from nimbus.jobs import JobStore

    try:
        workers = JobStore(redis.Redis.from_url(stack["urls"]["redis"])).workers()
    except redis.RedisError as error:
        served["workers"] = f"unknown (redis: {error})"
        return served
    for worker_name, info in sorted(workers.items()):
        what = info.get("model")
        served[f"worker {worker_name}"] = (
            f"{what['name']}/{what['version']}" if what else "no model yet"
        )
    return served


@main.command()
@click.argument("job_ids", nargs=-1)
@click.option(
    "--since", default=None, help="Replay every job published this long ago or later: 30m, 2h, 7d."
)
def replay(job_ids: tuple[str, ...], since: str | None) -> None:
    """Reprocess jobs: `--since 2h` seeks the worker subscription back, or name JOB_IDS.

    A replayed job runs again only if the production model is now another version than the
    one that produced its result; otherwise the replay is a no-op.
    """
    if bool(job_ids) == bool(since):
        raise click.UsageError("Give either --since DURATION or one or more JOB_IDS.")
    _adopt_local_stack()
    settings = Settings.from_env()
    if since:
        from datetime import UTC, datetime, timedelta

        from google.cloud import pubsub_v1

        moment = datetime.now(UTC) - timedelta(seconds=_seconds(since))
        subscriber = pubsub_v1.SubscriberClient()
        try:
            subscriber.seek(request={"subscription": settings.subscription_path, "time": moment})
        finally:
            subscriber.close()
        click.echo(
            f"{settings.subscription_path}: replaying messages since {moment:%Y-%m-%d %H:%M:%S} UTC"
        )
        return
    from nimbus.bus import JobBus, new_publisher
    from nimbus.errors import ServiceUnavailable

    bus = JobBus(new_publisher(), settings.topic_path, timeout=settings.publish_timeout)
    failed = 0
    for job_id in job_ids:
        try:
            bus.publish_job(job_id, replay="1")
            click.echo(f"{job_id}: republished")
        except ServiceUnavailable as error:
            failed += 1
            click.echo(f"{job_id}: {error.message}", err=True)
    if failed:
        sys.exit(1)


def _seconds(duration: str) -> float:
    """'90s', '30m', '2h', '7d' as seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = duration.strip().lower()
    try:
        value = float(text[:-1]) if text[-1:] in units else float(text)
    except ValueError:
        raise click.BadParameter(f"{duration!r} is not a duration like 30m, 2h or 7d.") from None
    seconds = value * units.get(text[-1:], 1)
    if seconds <= 0:
        raise click.BadParameter(f"{duration!r} must be positive.")
    return seconds


url_option = click.option(
    "--url", default=None, help="API base URL (default NIMBUS_URL, else the local gateway)."
)
key_option = click.option("--api-key", default=None, help="API key (default NIMBUS_API_KEY).")


def _client(url: str | None, api_key: str | None) -> NimbusClient:
    settings = Settings.from_env()
    return NimbusClient(url or settings.api_url, api_key=api_key or settings.api_key or None)


def _fail(error: ApiError) -> NoReturn:
    click.echo(f"nimbus: {error}", err=True)
    sys.exit(3 if error.status == 0 else 1)


@main.command()
@click.option(
    "-f",
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Rows from a .json, .jsonl or .csv file.",
)
@click.option(
    "--field", "fields", multiple=True, metavar="NAME=VALUE", help="One input field (repeat)."
)
@click.option("--proba", is_flag=True, help="Add class probabilities.")
@url_option
@key_option
def predict(
    path: Path | None, fields: tuple[str, ...], proba: bool, url: str | None, api_key: str | None
) -> None:
    """One synchronous prediction (or one per row of a file), printed as JSON."""
    from nimbus.client import read_items

    if bool(path) == bool(fields):
        raise click.UsageError("Give either --file or one or more --field NAME=VALUE.")
    rows: Any
    if path is not None:
        rows = read_items(path)
    else:
        rows = {}
        for pair in fields:
            name, sep, value = pair.partition("=")
            if not sep:
                raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--field")
            rows[name] = _number(value)
    try:
        click.echo(json.dumps(_client(url, api_key).predict(rows, proba=proba)))
    except ApiError as error:
        _fail(error)


@main.group()
def batch() -> None:
    """Submit batch jobs, follow them, fetch their results."""


@batch.command("submit")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--wait", is_flag=True, help="Follow the job with a progress bar until it finishes.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds --wait waits.")
@url_option
@key_option
def batch_submit(
    path: Path, wait: bool, timeout: float, url: str | None, api_key: str | None
) -> None:
    """Submit the items of a .json, .jsonl or .csv file as one job; print its id."""
    from nimbus.client import read_items

    client = _client(url, api_key)
    try:
        job = client.submit(read_items(path))
    except ApiError as error:
        _fail(error)
    click.echo(job["job_id"])
    if not wait:
        return
    with click.progressbar(length=1, label="running", file=sys.stderr) as bar:

        def show(state: dict[str, Any]) -> None:
            progress = state.get("progress") or {}
            if progress.get("total"):
                bar.length = progress["total"]
                bar.update(progress["done"] - bar.pos)
            bar.label = state["status"]

        try:
            final = client.wait(job["job_id"], timeout=timeout, on_progress=show)
        except ApiError as error:
            _fail(error)
        except TimeoutError as error:
            click.echo(f"nimbus: {error}", err=True)
            sys.exit(4)
    click.echo(f"{job['job_id']}: {final['status']}", err=True)
    if final["status"] != "SUCCESS":
        sys.exit(2)


@batch.command("status")
@click.argument("job_id")
@url_option
@key_option
def batch_status(job_id: str, url: str | None, api_key: str | None) -> None:
    """Print a job's status (without its result) as JSON."""
    try:
        job = _client(url, api_key).status(job_id, offset=0)
    except ApiError as error:
        _fail(error)
    job.pop("result", None)
    job.pop("page", None)
    click.echo(json.dumps(job, indent=2))


@batch.command("results")
@click.argument("job_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="A .csv or .jsonl file.",
)
@url_option
@key_option
def batch_results(job_id: str, output: Path, url: str | None, api_key: str | None) -> None:
    """Write a finished job's results, every page, to a .csv or .jsonl file."""
    from nimbus.client import write_results

    if output.suffix.lower() not in {".csv", ".jsonl"}:
        raise click.BadParameter("use a .csv or .jsonl file", param_hint="--output")
    try:
        count = write_results(output, _client(url, api_key).results(job_id))
    except ApiError as error:
        _fail(error)
    click.echo(f"{count} results written to {output}")


@batch.command("cancel")
@click.argument("job_id")
@url_option
@key_option
def batch_cancel(job_id: str, url: str | None, api_key: str | None) -> None:
    """Revoke a job that has not finished."""
    try:
        job = _client(url, api_key).cancel(job_id)
    except ApiError as error:
        _fail(error)
    click.echo(f"{job['job_id']}: {job['status']}")


def _number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


@batch.command("list")
@click.option("--limit", default=20, show_default=True, help="How many jobs, newest first.")
@url_option
@key_option
def batch_list(limit: int, url: str | None, api_key: str | None) -> None:
    """Your recent jobs, newest first (only the ones your API key submitted)."""
    try:
        jobs = _client(url, api_key).recent(limit=limit)
    except ApiError as error:
        _fail(error)
    for job in jobs:
        progress = job.get("progress") or {}
        total = progress.get("total")
        done = f"{progress.get('done', 0)}/{'?' if total is None else total}"
        click.echo(f"{job['job_id']}  {job['status']:<8} {done:>15}  {job.get('created_at', '')}")


@main.group()
def keys() -> None:
    """API keys: NIMBUS_API_KEYS holds their SHA-256 digests, never the keys."""


@keys.command("new")
@click.argument("name")
def keys_new(name: str) -> None:
    """Print a new random key for NAME and the NIMBUS_API_KEYS entry that accepts it."""
    from nimbus.auth import key_entry, new_key

    key = new_key()
    try:
        entry = key_entry(name, key)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="NAME") from None
    click.echo(f"key:   {key}")
    click.echo(f"entry: {entry}")
    click.echo(
        "Give the key to its user (it is shown only this once; send it as "
        "'Authorization: Bearer <key>' or with --api-key / NIMBUS_API_KEY) and append the entry "
        "to NIMBUS_API_KEYS (comma-separated).",
        err=True,
    )


@main.command("config")
def show_config() -> None:
    """Print every environment variable Nimbus reads, as a Markdown table."""
    click.echo("| variable | default | what it sets |")
    click.echo("|---|---|---|")
    for name, default, doc in documented_variables():
        click.echo(f"| `{name}` | {f'`{default}`' if default else '(empty)'} | {doc} |")


if __name__ == "__main__":
    main()
