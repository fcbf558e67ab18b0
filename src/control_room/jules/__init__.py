"""The upstream: the Jules REST API, its mapping to our models, and a simulator of it."""
