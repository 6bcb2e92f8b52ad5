"""Hugging Face Hub side of magsd-timm (importable as magsd_timm.hub): push, pull, and the cards."""
from ..train.run_folder import TrainingRun, find_run
from .cards import render_model_card
from .pull import checkpoint_config, load, resolve_model_name
from .push import PushError, push_dataset, push_model, stage_dataset, stage_model

__all__ = ['PushError', 'TrainingRun', 'checkpoint_config', 'find_run', 'load', 'push_dataset', 'push_model', 'render_model_card',
           'resolve_model_name', 'stage_dataset', 'stage_model']
