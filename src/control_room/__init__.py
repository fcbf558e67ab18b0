"""Jules Control Room: live deltas of Jules coding sessions over WebSocket."""

__version__ = "0.1.0"
