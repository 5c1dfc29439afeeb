"""Networking: transports (TCP, in memory), one connection (peer), the node (gossip, PEX)."""
