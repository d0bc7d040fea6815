"""``python -m vqkit`` is the ``vqkit`` command."""

import sys

from vqkit.cli import main

sys.exit(main())
