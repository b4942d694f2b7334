"""Optional API keys: `NIMBUS_API_KEYS` holds `name:sha256hex` entries, never a key itself.

A key is a random token (`nimbus keys new NAME` makes one); the server keeps only its SHA-256,
which is enough for a 256-bit random secret (no password stretching needed), and compares
digests in constant time. Callers send `Authorization: Bearer <key>` or `X-API-Key: <key>`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nimbus.errors import ConfigError

if TYPE_CHECKING:
    from flask import Request

ANONYMOUS = "anonymous"  # the owner of every job when no keys are configured
KEY_PREFIX = "nimbus_"

_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def new_key() -> str:
    """A new random API key: 256 bits from `secrets`, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    """The SHA-256 of a key, in hex: what NIMBUS_API_KEYS stores."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_entry(name: str, key: str) -> str:
    """The NIMBUS_API_KEYS entry for `key` under `name`."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"Key name {name!r} must be 1-64 letters, digits or . _ @ - (it names job owners)."
        )
    return f"{name}:{digest(key)}"


def presented_key(request: Request) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>`, else `X-API-Key`."""
    authorization = request.headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key", "").strip() or None


@dataclass(frozen=True)
class ApiKeys:
    """The configured keys, by name; empty means authentication is off."""

    digests: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def parse(cls, text: str) -> ApiKeys:
        """From NIMBUS_API_KEYS; ConfigError naming the entry that is malformed."""
        entries: list[tuple[str, bytes]] = []
        for position, raw in enumerate(text.split(","), start=1):
            entry = raw.strip()
            if not entry:
                continue
            name, _, hexdigest = entry.rpartition(":")
            hexdigest = hexdigest.lower()
            if not _NAME.fullmatch(name) or not _DIGEST.fullmatch(hexdigest):
                raise ConfigError(
                    f"NIMBUS_API_KEYS entry {position} is not `name:sha256hex` (a name of "
                    "letters, digits, . _ @ -, and 64 hex digits); `nimbus keys new NAME` "
                    "prints a valid one. Never put a key itself in NIMBUS_API_KEYS."
                )
            entries.append((name, bytes.fromhex(hexdigest)))
        return cls(tuple(entries))

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def name_for(self, key: str | None) -> str | None:
        """The name of the configured key equal to `key`, or None; every entry is compared,
        each in constant time, so the answer's timing says nothing about the keys."""
        if key is None:
            return None
        presented = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found = None
        for name, stored in self.digests:
            if hmac.compare_digest(presented, stored) and found is None:
                found = name
        return found
