"""Default plugins. They use only cortex's public API, like any third-party plugin."""
