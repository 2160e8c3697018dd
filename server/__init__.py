"""NBO: a real-time next-best-offer decisioning server."""

__version__ = "0.1.0"
