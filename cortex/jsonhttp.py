"""One JSON call over HTTP for the command-line tools (`cortex`, `neuron`, `validate`).

The CLIs run outside any event loop and make a handful of calls, so the standard
library's urllib is enough; errors come back as one exception that says whether the
server answered, timed out or could not be reached.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

__all__ = ["HttpFailure", "call_json"]


class HttpFailure(Exception):
    def __init__(self, message: str, *, timed_out: bool = False,
                 unreachable: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.message, self.timed_out, self.unreachable = message, timed_out, unreachable
        self.status = status  # the HTTP status of an answer that was an error


def call_json(url: str, path: str, *, body: object = None, method: str | None = None,
              timeout: float, bearer: str | None = None) -> Any:
    """GET (or POST when there is a body) and decode the JSON answer.

    A non-2xx answer raises HttpFailure("STATUS: message") with the message of the
    server's OpenAI-style error envelope when it has one.
    """
    headers = {"content-type": "application/json"}
    if bearer:
        headers["authorization"] = f"Bearer {bearer}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url.rstrip('/')}{path}", data=data, headers=headers,
                                     method=method or ("GET" if body is None else "POST"))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.load(reply)
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise HttpFailure(f"{exc.code}: {message}", status=exc.code) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise HttpFailure(f"no answer within {timeout:g}s", timed_out=True) from None
        raise HttpFailure(str(exc.reason), unreachable=True) from None
    except TimeoutError:
        raise HttpFailure(f"no answer within {timeout:g}s", timed_out=True) from None
    except OSError as exc:
        raise HttpFailure(str(exc), unreachable=True) from None
