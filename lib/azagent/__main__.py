"""`python -m azagent` is the same as the `azagent` command."""

import sys

from azagent.cli import main

sys.exit(main())
