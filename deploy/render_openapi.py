"""Render openapi.yaml (the one spec) into the document Google API Gateway is given.

    python deploy/render_openapi.py openapi.yaml OUT.yaml \
        predict=https://… batch_submit=https://… batch_status=https://…

API Gateway takes OpenAPI 3.x with its own extensions: `x-google-api-management.backends`
names each function's address, and each operation's `x-google-backend` names its backend.
The rendering:

- fills every `${NAME_URL}` placeholder with the URL given for its backend;
- drops `security` and `components.securitySchemes`: API Gateway reads an `apiKey` scheme as a
  Google Cloud API key and would refuse Nimbus's own keys, which the functions check;
- drops `servers` (API Gateway serves at its own host);
- fails when a placeholder is left, or an operation names no known backend.

It uses only PyYAML, which the project's venv has.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")


class RenderError(Exception):
    pass


def render(spec: dict[str, Any], urls: dict[str, str]) -> dict[str, Any]:
    """The API Gateway document for `spec`, with each backend at urls[backend name]."""
    out = copy.deepcopy(spec)
    if not str(out.get("openapi", "")).startswith("3."):
        raise RenderError(f"openapi.yaml must be OpenAPI 3.x, not {out.get('openapi')!r}")
    backends = out.get("x-google-api-management", {}).get("backends") or {}
    if not backends:
        raise RenderError("openapi.yaml has no x-google-api-management.backends")
    for name, backend in backends.items():
        if name not in urls:
            raise RenderError(f"no URL given for the backend {name!r}")
        backend["address"] = urls[name]
    for path, item in out.get("paths", {}).items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            backend = operation.get("x-google-backend")
            if backend not in backends:
                raise RenderError(f"{method.upper()} {path}: x-google-backend {backend!r} unknown")
            operation.pop("security", None)
    out.pop("security", None)
    out.pop("servers", None)
    out.get("components", {}).pop("securitySchemes", None)
    text = yaml.safe_dump(out, sort_keys=False)
    left = PLACEHOLDER.search(text)
    if left:
        raise RenderError(f"openapi.yaml has a placeholder left unfilled: {left.group(0)}")
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2 or any("=" not in arg for arg in argv[2:]):
        print(__doc__, file=sys.stderr)
        return 2
    source, target, *pairs = argv
    urls = dict(pair.split("=", 1) for pair in pairs)
    try:
        document = render(yaml.safe_load(Path(source).read_text()), urls)
    except (OSError, yaml.YAMLError, RenderError) as error:
        print(f"render_openapi: {error}", file=sys.stderr)
        return 1
    Path(target).write_text(yaml.safe_dump(document, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
