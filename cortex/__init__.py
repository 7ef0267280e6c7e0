"""cortex: one OpenAI- and Anthropic-compatible API over a fleet of GPU hosts.

This module is the public API that plugins and embedding applications import.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from cortex.config import (
    MAX_N_THREADS,
    GatewayConfig,
    ModelProfile,
    NeuronConfig,
    did_you_mean,
    load_gateway_config,
    load_neuron_config,
    parse_bytes,
)
from cortex.dialect import (
    Call,
    CatalogueEntry,
    Dialect,
    Exchange,
    GatewayAPI,
    LoadProgress,
    Operation,
    SSEReader,
    decode_body,
    loading_comment,
    prefix_hashes,
    sse_frame,
)
from cortex.discovery import Discovered, DiscoverySource, Found
from cortex.errors import (
    ConfigError,
    ContextLengthExceeded,
    CortexError,
    InvalidRequest,
    PluginError,
    Timeout,
    Unavailable,
    UnsupportedFeature,
    UpstreamError,
)
from cortex.evictor import EvictionPolicy, Evictor
from cortex.harness import (
    Admitted,
    Done,
    Engine,
    EngineStats,
    GenerationEvent,
    Harness,
    ReasoningDelta,
    ResolvedModel,
    TextDelta,
    ToolCalls,
)
from cortex.hookspecs import hookimpl
from cortex.plugins import Plugins, build_plugin_manager
from cortex.records import MAX_LOGGED, FleetEvent, RequestRecord, log_value
from cortex.rendezvous import rendezvous, rendezvous_weight
from cortex.router import Decision, Placement, Replica, Router, RouteRequest, RoutingStrategy
from cortex.snapshot import FleetSnapshot, ModelView, NodeView
from cortex.stops import StopMatcher
from cortex.types import (
    GPU,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    MemoryEstimate,
    StreamOptions,
    TokenizeRequest,
    TokenizeResponse,
    Tool,
    ToolCall,
    ToolCallFunction,
    ToolFunction,
    Usage,
)

try:
    __version__ = version("cortex")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "GPU",
    "MAX_LOGGED",
    "MAX_N_THREADS",
    "Admitted",
    "Call",
    "CatalogueEntry",
    "ChatCompletion",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "ConfigError",
    "ContextLengthExceeded",
    "CortexError",
    "Decision",
    "Dialect",
    "Discovered",
    "DiscoverySource",
    "Done",
    "EmbeddingRequest",
    "Engine",
    "EngineStats",
    "EvictionPolicy",
    "Evictor",
    "Exchange",
    "FleetEvent",
    "FleetSnapshot",
    "Found",
    "GatewayAPI",
    "GatewayConfig",
    "GenerationEvent",
    "Harness",
    "InvalidRequest",
    "LoadProgress",
    "MemoryEstimate",
    "ModelProfile",
    "ModelView",
    "NeuronConfig",
    "NodeView",
    "Operation",
    "Placement",
    "PluginError",
    "Plugins",
    "ReasoningDelta",
    "Replica",
    "RequestRecord",
    "ResolvedModel",
    "RouteRequest",
    "Router",
    "RoutingStrategy",
    "SSEReader",
    "StopMatcher",
    "StreamOptions",
    "TextDelta",
    "Timeout",
    "TokenizeRequest",
    "TokenizeResponse",
    "Tool",
    "ToolCall",
    "ToolCallFunction",
    "ToolCalls",
    "ToolFunction",
    "Unavailable",
    "UnsupportedFeature",
    "UpstreamError",
    "Usage",
    "__version__",
    "build_plugin_manager",
    "decode_body",
    "did_you_mean",
    "hookimpl",
    "load_gateway_config",
    "load_neuron_config",
    "loading_comment",
    "log_value",
    "parse_bytes",
    "prefix_hashes",
    "rendezvous",
    "rendezvous_weight",
    "sse_frame",
]
