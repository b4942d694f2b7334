"""Cloud Run function `predict`: one synchronous prediction from the `@production` model."""

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
def predict(request: Request) -> Response:
    registry = clients.model_registry
    return api.dispatch(
        request,
        {
            "/": {
                "GET": api.health,
                "POST": lambda: api.predict(request, registry, clients.settings),
            },
            "/v1/predict": {"POST": lambda: api.predict(request, registry, clients.settings)},
            "/ready": {"GET": lambda: api.predict_ready(registry)},
        },
        clients.gate,
    )
