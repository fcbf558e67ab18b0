"""Fan-out and history: numbered deltas go in, local sinks and replaying clients read them."""
