"""A per-caller rate limit kept in Redis: a fixed one-minute window, one round trip per request.

Every process of every function shares the count, so the limit holds however many instances
Cloud Run starts. If Redis cannot be reached the limiter lets requests through (fail open) and
does not try again for a few seconds, so an outage of the job store never slows or fails a
prediction.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60

# KEYS: the caller's counter for the current window. ARGV: the limit, the window in seconds.
# Returns {count, seconds until the window ends}.
_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]); ttl = tonumber(ARGV[2]) end
return {count, ttl}
"""


class RateLimiter:
    """At most `per_minute` requests per caller per minute window."""

    def __init__(
        self,
        connection: redis.Redis,
        *,
        per_minute: int,
        prefix: str = "nimbus:rate:",
        pause_after_failure: float = 10.0,
    ) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute must be at least 1, got {per_minute}")
        self.connection = connection
        self.per_minute = per_minute
        self.prefix = prefix
        self.pause_after_failure = pause_after_failure
        self._hit = connection.register_script(_HIT)
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def retry_after(self, caller: str) -> int | None:
        """Count one request by `caller`: None if it may go on, else seconds to wait."""
        if time.monotonic() < self._paused_until:
            return None
        window = int(time.time()) // WINDOW_SECONDS
        key = f"{self.prefix}{caller}:{window}".encode("utf-8", "surrogatepass")
        try:
            count, ttl = self._hit(keys=[key], args=[self.per_minute, WINDOW_SECONDS])
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
            with self._lock:
                if time.monotonic() >= self._paused_until:
                    logger.warning(
                        "rate limit not enforced for %.0fs: redis unreachable (%s)",
                        self.pause_after_failure,
                        error,
                    )
                    self._paused_until = time.monotonic() + self.pause_after_failure
            return None
        if int(count) <= self.per_minute:
            return None
        return max(1, int(ttl))
