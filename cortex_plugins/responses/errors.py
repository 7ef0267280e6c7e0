"""Errors on Responses routes: OpenAI's envelope, with the field names of this API.

The neuron names the canonical request's fields (`messages`, `response_format`,
`max_tokens`); a Responses client sent `input`, `text.format` and `max_output_tokens`,
so `param` is renamed on the way out. Failures after a stream began are the
`error` and `response.failed` events the StreamTranslator writes from `error_code`.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

from cortex import CortexError, InvalidRequest

__all__ = ["PreviousResponseNotFound", "ResponseNotFound", "envelope", "error_code",
           "error_response", "upstream_response"]

_encode = msgspec.json.Encoder().encode
_any = msgspec.json.Decoder()
#: A canonical field → the Responses field the client set.
_PARAMS = {"messages": "input", "response_format": "text.format",
           "max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens"}


class ResponseNotFound(CortexError):
    """A response id this replica never produced, no longer keeps, or never stored."""

    status = 404
    openai_type = "invalid_request_error"
    code = "not_found"

    def __init__(self, response_id: str) -> None:
        super().__init__(f"Response with id '{response_id}' not found: this gateway keeps "
                         "the responses it produced (with `store`) in a bounded cache",
                         param="response_id")


class PreviousResponseNotFound(InvalidRequest):
    code = "previous_response_not_found"

    def __init__(self, response_id: str, missing: str | None = None) -> None:
        gone = f" (its earlier turn '{missing}' is no longer kept)" if missing else ""
        super().__init__(
            f"Previous response with id '{response_id}' not found{gone}: only responses "
            "this gateway replica produced with `store` left on are kept, and only the "
            "most recent ([dialects.responses] store_size, store_bytes); send the "
            "conversation as `input` items instead", param="previous_response_id")


def _param(param: Any) -> Any:
    if not isinstance(param, str):
        return param
    base = param.partition(".")[0].partition("[")[0]
    # A message's index is not an input item's (instructions, merged turns): name the field.
    return _PARAMS.get(base, param)


def envelope(exc: CortexError) -> dict[str, Any]:
    body = exc.openai_envelope()
    body["error"]["param"] = _param(exc.param)
    return body


def error_code(exc: CortexError) -> str:
    """`response.error.code`: the error's own code, else its type."""
    return exc.code or exc.openai_type


def error_response(exc: CortexError) -> Response:
    return Response(_encode(envelope(exc)), status_code=exc.status,
                    media_type="application/json", headers=exc.headers())


def upstream_response(status: int, body: bytes, exc: CortexError) -> Response:
    """A neuron's error before the stream began: its envelope, code and status kept, its
    `param` renamed (anything else it said is rebuilt from `exc`)."""
    try:
        data = _any.decode(body)
    except msgspec.DecodeError:
        data = None
    if not (isinstance(data, dict) and isinstance(data.get("error"), dict)):
        return Response(_encode(envelope(exc)), status_code=status,
                        media_type="application/json", headers=exc.headers())
    data["error"]["param"] = _param(data["error"].get("param"))
    return Response(_encode(data), status_code=status, media_type="application/json",
                    headers=exc.headers())
