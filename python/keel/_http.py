"""A small JSON-over-HTTP client on the standard library."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class Unreachable(Exception):
    """The server did not answer (refused, reset, timed out) or answered 5xx: try again later."""


class Refused(Exception):
    """The server answered 4xx: sending the same again will not help."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class Client:
    def __init__(self, server: str, token: str | None):
        self.server = server.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.server + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                message = json.loads(raw).get("error", "")
            except (ValueError, AttributeError):
                message = raw.decode(errors="replace")[:500]
            if e.code >= 500 or e.code == 429:
                raise Unreachable(f"{e.code}: {message}") from None
            raise Refused(e.code, message) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            # ValueError: http.client's errors on a half-closed connection
            raise Unreachable(str(getattr(e, "reason", e))) from None
        return json.loads(raw) if raw else None
