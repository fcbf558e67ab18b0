"""Durable state: deltas (append-only), the current snapshot, the epoch and the last seq."""
