"""Environments and tools for TurnRL."""
