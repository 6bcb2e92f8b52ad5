"""Hugging Face Hub side of magsd-timm (importable as magsd_timm.hub): push, pull, and the cards.

The names below load on first use, so that the command line's parsers (``magsd_timm.cli.magsd_hub``) start
without torch, timm or huggingface_hub.
"""
from ..utils.lazy import lazy_attributes

_WHERE = {
    'TrainingRun': '..run_records', 'find_run': '..run_records', 'render_model_card': '.cards',
    'checkpoint_config': '.pull', 'load': '.pull', 'load_lung_crop': '.pull', 'resolve_model_name': '.pull',
    'PushError': '.push',
    'push_dataset': '.push', 'push_model': '.push', 'stage_dataset': '.push', 'stage_model': '.push',
}
__all__ = sorted(_WHERE)


__getattr__ = lazy_attributes(__name__, _WHERE)
