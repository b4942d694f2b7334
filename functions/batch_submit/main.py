"""Cloud Run function `batch_submit`: record a batch job in Redis and queue it on Pub/Sub;
also cancels one (DELETE)."""

from __future__ import annotations

import functions_framework
from flask import Request, Response
from werkzeug.exceptions import HTTPException

from nimbus import api, http
from nimbus.clients import Clients
from nimbus.logs import FUNCTION_BUFFER_SECONDS, configure_logging

clients = Clients()
configure_logging(clients.settings.log_level, buffer_seconds=FUNCTION_BUFFER_SECONDS)
functions_framework.errorhandler(HTTPException)(http.http_exception_response)


@functions_framework.http
def batch_submit(request: Request) -> Response:
    def submit() -> Response:
        return api.submit_batch(
            request,
            clients.job_store,
            clients.job_bus,
            clients.model_registry,
            clients.settings,
            storage=lambda: clients.storage,
        )

    routes: dict[str, dict[str, api.Handler]] = {
        "/": {"GET": api.health, "POST": submit},
        "/v1/batch": {"POST": submit},
        "/ready": {
            "GET": lambda: api.submit_ready(
                clients.job_store, clients.job_bus, clients.model_registry
            )
        },
    }
    # Cancelling is a write, so it is this function's: DELETE /v1/batch/<id> (or /<id>).
    job_id = api.job_id_from_path(request.path)
    if job_id is not None:
        routes[request.path.rstrip("/")] = {
            "DELETE": lambda: api.cancel_batch(request, job_id, clients.job_store)
        }
    return api.dispatch(request, routes, clients.gate)
