"""The `nimbus` command."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

import click

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


@main.command("config")
def show_config() -> None:
    """Print every environment variable Nimbus reads, as a Markdown table."""
    click.echo("| variable | default | what it sets |")
    click.echo("|---|---|---|")
    for name, default, doc in documented_variables():
        click.echo(f"| `{name}` | {f'`{default}`' if default else '(empty)'} | {doc} |")


if __name__ == "__main__":
    main()
