"""Cloud Run function `batch_submit`: record a batch job in Redis and queue it on Pub/Sub."""

from __future__ import annotations

import functions_framework
from flask import Request, Response

from nimbus import api
from nimbus.clients import Clients
from nimbus.logs import configure_logging

clients = Clients()
configure_logging(clients.settings.log_level)


@functions_framework.http
def batch_submit(request: Request) -> Response:
    def submit() -> Response:
        return api.submit_batch(
            request, clients.job_store, clients.job_bus, clients.model_registry, clients.settings
        )

    return api.dispatch(
        request,
        {
            "/": {"GET": api.health, "POST": submit},
            "/v1/batch": {"POST": submit},
            "/ready": {"GET": lambda: api.submit_ready(clients.job_store, clients.job_bus)},
        },
    )
