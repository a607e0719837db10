"""synaptic-tui: fine-tune a small LLM from the terminal, from training to evaluation."""

__version__ = "0.1.0"
