"""python -m magsd_timm.hub: the same as the magsd-hub command."""
import sys

from .cli import main

sys.exit(main())
