"""python -m magsd_timm.hub: the same as the magsd-hub command."""
import sys

from ..cli.magsd_hub import main

sys.exit(main())
