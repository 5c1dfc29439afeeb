"""p2pupdate: peer-to-peer update distribution for a fleet of hosts."""

__all__ = ["__version__"]

__version__ = "0.1.0"
