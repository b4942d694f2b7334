"""The floor of our serving stack: functions-framework with a handler that does no work.

It reads the body (as any handler must) and answers a constant prediction, so what it costs
is gunicorn, Flask and functions-framework alone. The bench starts it with the predict
function's own command line.
"""

from __future__ import annotations

import functions_framework
from flask import Request

BODY = b'{"prediction": 0}'
HEADERS = {"Content-Type": "application/json"}


@functions_framework.http
def floor(request: Request) -> tuple[bytes, int, dict[str, str]]:
    request.get_data()
    return BODY, 200, HEADERS
