"""python -m magsd_timm: the same as the magsd command."""
import sys

from .cli.magsd import main

sys.exit(main())
