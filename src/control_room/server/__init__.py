"""The HTTP front door: listening sockets, connection cap, deadlines, throttling, origins."""
