"""Cloud Run function `batch_status`: read a batch job's state and result from Redis, and list
the caller's recent jobs."""

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
def batch_status(request: Request) -> Response:
    routes: dict[str, dict[str, api.Handler]] = {
        "/": {"GET": api.health},
        "/ready": {"GET": lambda: api.status_ready(clients.job_store)},
        "/v1/batch": {"GET": lambda: api.list_batches(request, clients.job_store)},
    }
    job_id = api.job_id_from_path(request.path)
    if job_id is not None:
        routes[request.path.rstrip("/")] = {
            "GET": lambda: api.batch_status(request, job_id, clients.job_store, clients.settings)
        }
    return api.dispatch(request, routes, clients.gate)
