"""Textual screens of synaptic-tui, one module per screen."""
