"""The benchmark suite (`make bench`): the control room against its peers, on loopback."""
