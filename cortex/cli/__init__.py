"""The `cortex` command line: serve the gateway, and steer a running one (cortex.cli.main)."""

from __future__ import annotations

from cortex.cli.main import main

__all__ = ["main"]
