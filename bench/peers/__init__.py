"""Peer servers the control room is measured against (run as scripts, not imported by it)."""
