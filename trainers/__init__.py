"""Training programs the app launches as subprocesses (python -m trainers.<name>)."""
