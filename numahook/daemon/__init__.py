"""numahookd: keeps managed domains and the node's real-time picture right between hooks."""
