"""One error hierarchy for the gateway, the neuron and the library.

Every error knows its HTTP status and how it reads in the OpenAI envelope, which is
canonical because neurons speak it: the gateway rebuilds a neuron's error from that
envelope (`from_openai_envelope`), and each dialect re-encodes it in its own shape
(the Anthropic dialect maps statuses to its own error types). Below, each status with
the OpenAI `type` or `code` it carries::

    CortexError                      500 server_error
    ├── ConfigError                  (start-up only: names file, key and reason)
    ├── PluginError                  (start-up only: duplicate or unknown plugin names)
    ├── InvalidRequest               400 invalid_request_error
    │   ├── ContextLengthExceeded    400 context_length_exceeded
    │   ├── UnsupportedFeature       400 (e.g. chat on a model with no chat template)
    │   ├── Quarantined              400 (a body a neuron died holding: not sent again for now)
    │   └── Unservable               400 model_unservable (no node can ever hold the model)
    ├── AuthenticationFailed         401 authentication_error
    ├── PermissionDenied             403 permission_error
    ├── NotFound                     404 not_found
    │   └── ModelNotFound            404 model_not_found
    ├── RequestTimeout               408 (a request body stalled; the connection closes)
    ├── Conflict                     409 (e.g. unload of a model that is loading)
    ├── PayloadTooLarge              413 request_too_large
    ├── HeadersTooLarge              431 (a request line plus headers over max_header_bytes)
    ├── RateLimited                  429 rate_limit_error (carries Retry-After)
    ├── InsufficientMemory           507 (a load that does not fit the node's budget)
    ├── UpstreamError                502 upstream_error (a neuron failed)
    │   ├── Unreachable              502 (no answer: refused, reset, timed out; safe to retry)
    │   └── NeuronDied               502 (the neuron died holding the request: not retried)
    ├── Unavailable                  503 unavailable (carries Retry-After)
    └── Timeout                      504 timeout_error
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AuthenticationFailed",
    "ConfigError",
    "Conflict",
    "ContextLengthExceeded",
    "CortexError",
    "HeadersTooLarge",
    "InsufficientMemory",
    "InvalidRequest",
    "ModelNotFound",
    "NeuronDied",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "PluginError",
    "Quarantined",
    "RateLimited",
    "RequestTimeout",
    "Timeout",
    "Unavailable",
    "Unreachable",
    "Unservable",
    "UnsupportedFeature",
    "UpstreamError",
    "from_openai_envelope",
]


class CortexError(Exception):
    status: ClassVar[int] = 500
    openai_type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None

    def __init__(self, message: str, *, param: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after

    def openai_envelope(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.openai_type,
                          "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"retry-after": str(max(1, round(self.retry_after)))}


class ConfigError(CortexError):
    """Raised while reading configuration; the message names file, key and reason."""


class PluginError(CortexError):
    """Raised while building the plugin manager or picking a plugin by name."""


class InvalidRequest(CortexError):
    status = 400
    openai_type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, n_ctx: int, *, max_tokens: int = 0,
                 param: str = "messages") -> None:
        # Claude Code recognises this exact wording ("prompt is too long: N tokens > M maximum").
        super().__init__(
            f"prompt is too long: {prompt_tokens} tokens > {n_ctx} maximum"
            + (f" (with max_tokens {max_tokens})" if max_tokens else ""),
            param=param,
        )
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx


class UnsupportedFeature(InvalidRequest):
    code = "unsupported"


class Quarantined(InvalidRequest):
    """The same request (model, route and body) was on a neuron when it died, recently:
    sending it to another node would likely kill that one too."""

    code = "request_quarantined"


class Unservable(InvalidRequest):
    """No node the profile allows can ever hold the model (its estimate is over every
    budget, or every neuron refused its source): retrying cannot help, so this is a 4xx
    the SDKs do not retry, unlike the 503 of a fleet that is only busy."""

    code = "model_unservable"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model")


class AuthenticationFailed(CortexError):
    status = 401
    openai_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(CortexError):
    status = 403
    openai_type = "permission_error"


class NotFound(CortexError):
    status = 404
    openai_type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist or is not served here.",
                         param="model")
        self.model = model


class RequestTimeout(CortexError):
    """The client stopped sending its body. The answer closes the connection: what is
    left of the body would otherwise be read as the next request."""

    status = 408
    openai_type = "invalid_request_error"
    code = "request_timeout"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "connection": "close"}


class Conflict(CortexError):
    status = 409
    openai_type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(CortexError):
    status = 413
    openai_type = "invalid_request_error"
    code = "request_too_large"


class HeadersTooLarge(CortexError):
    status = 431
    openai_type = "invalid_request_error"
    code = "request_header_fields_too_large"


class RateLimited(CortexError):
    status = 429
    openai_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class InsufficientMemory(CortexError):
    status = 507
    openai_type = "server_error"
    code = "insufficient_memory"


class UpstreamError(CortexError):
    status = 502
    code = "upstream_error"


class Unreachable(UpstreamError):
    """A neuron gave no HTTP answer: connection refused, reset or timed out."""

    code = "upstream_unreachable"


class NeuronDied(UpstreamError):
    """The neuron died (or restarted) while it held the request, before its first byte."""

    code = "upstream_died"


class Unavailable(CortexError):
    status = 503
    openai_type = "server_error"
    code = "unavailable"


class Timeout(CortexError):
    status = 504
    openai_type = "timeout_error"
    code = "timeout"


_BY_STATUS: dict[int, type[CortexError]] = {
    400: InvalidRequest, 401: AuthenticationFailed, 403: PermissionDenied, 404: NotFound,
    408: RequestTimeout, 409: Conflict, 413: PayloadTooLarge, 429: RateLimited, 502: UpstreamError,
    503: Unavailable, 504: Timeout, 507: InsufficientMemory,
}


def from_openai_envelope(status: int, body: Any) -> CortexError:
    """Rebuild the error a neuron answered with, so the gateway can re-emit it in any dialect."""
    message = f"upstream answered HTTP {status}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = str(body["error"].get("message") or message)
    cls = _BY_STATUS.get(status, UpstreamError if status >= 500 else InvalidRequest)
    err = cls(message)
    return err
