"""`python -m evaluator`: run, resume, compare and list evals without the app (same code as `synaptic-tui eval`)."""

import sys

from evaluator.cli import main

sys.exit(main())
