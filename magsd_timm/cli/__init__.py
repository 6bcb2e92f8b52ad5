"""The command line: `magsd` (magsd.py), `magsd-hub` (magsd_hub.py), their commands and their shared console."""
