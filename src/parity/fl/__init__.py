"""Federated learning: sessions, participants, rounds, model updates (ARCHITECTURE §4-§5)."""
