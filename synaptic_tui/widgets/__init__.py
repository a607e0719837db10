"""Reusable widgets of synaptic-tui."""
