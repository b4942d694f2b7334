"""One exception family; `error_body` is the one place that turns it into the error shape."""

from __future__ import annotations

from typing import Any


class NimbusError(Exception):
    """Base of every error Nimbus reports to a caller.

    `status` is the HTTP status, `code` a stable machine word, `message` says what is wrong and
    what to do, `details` carries field names or item indexes where they help.
    """

    status = 500
    code = "internal"

    def __init__(self, message: str, *, details: Any = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code is not None:
            self.code = code

    def to_body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)

    def headers(self) -> dict[str, str]:
        """Response headers the status calls for (Allow, WWW-Authenticate, Retry-After)."""
        if self.status == 405 and isinstance(self.details, dict) and "allow" in self.details:
            return {"Allow": self.details["allow"]}
        return {}


class BadRequest(NimbusError):
    """The body cannot be read: not JSON, not UTF-8, wrong top-level shape."""

    status = 400
    code = "bad_request"


class ValidationFailed(NimbusError):
    """The body is JSON but does not match the model's inputs; `details` lists every problem."""

    status = 422
    code = "validation_failed"


class Unauthorized(NimbusError):
    """No API key, or one that is not configured (NIMBUS_API_KEYS)."""

    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="nimbus"'}


class NotFound(NimbusError):
    status = 404
    code = "not_found"


class MethodNotAllowed(NimbusError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(NimbusError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(NimbusError):
    status = 415
    code = "unsupported_media_type"


class TooManyRequests(NimbusError):
    """The caller's rate limit (NIMBUS_RATE_LIMIT) is used up; `retry_after` seconds to wait."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, details={"retry_after": retry_after})
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Conflict(NimbusError):
    status = 409
    code = "conflict"


class ServiceUnavailable(NimbusError):
    """A dependency (Redis, Pub/Sub, the registry) cannot be reached; retrying later may work."""

    status = 503
    code = "unavailable"


class ModelUnavailable(ServiceUnavailable):
    code = "model_unavailable"


class ConfigError(Exception):
    """A setting is missing or malformed; raised at start, never answered to a caller."""


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The one error shape: {"error": {"code", "message"[, "details"]}}."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}
