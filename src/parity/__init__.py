"""Parity Server: coordination server for a decentralized AI and compute network."""

__version__ = "0.1.0"
