"""`python -m sandbox up|down|status|demo` — the embedded sandbox behind inventories/sandbox."""

import sys

from sandbox.cli import main

sys.exit(main())
