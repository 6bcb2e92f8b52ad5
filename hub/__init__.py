"""Hugging Face Hub side of magsd-timm (importable as magsd_timm.hub): card templates and their rendering."""
