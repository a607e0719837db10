import sys

from synaptic_tui.cli import main

sys.exit(main())
