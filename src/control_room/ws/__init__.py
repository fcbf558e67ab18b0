"""The WebSocket side: handshake and auth, per-connection writing, heartbeat, fan-out."""
