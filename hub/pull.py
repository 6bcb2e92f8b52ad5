"""Load MA-Net models by any name a user has for them: registered name, Hub id, or a local folder."""
import re
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import split_model_name_tag

from ..models import allow_pickle_weights, close_matches
from .cards import find_run

__all__ = ['load', 'resolve_model_name']

_HUB_ID = re.compile(r'[\w.-]+/[\w.-]+(@[\w./-]+)?')


def resolve_model_name(ref: str) -> str:
    """The timm model name of a registered name, an 'hf-hub:'/'local-dir:' name, 'org/repo[@rev]' or a local folder."""
    if ref.startswith(('hf-hub:', 'local-dir:')):
        return ref
    if Path(ref).is_dir():  # a training output (its best/) or a checkpoint folder
        return f'local-dir:{find_run(ref).checkpoint}'
    if timm.is_model(split_model_name_tag(ref)[0]):
        return ref
    if _HUB_ID.fullmatch(ref):
        return f'hf-hub:{ref}'
    raise ValueError(f"Unknown model '{ref}': not a registered model, a Hub id (org/name[@revision]) or a "
                     f"local folder.{close_matches(ref, timm.list_models('magsd_*'))}")


def load(ref: str, pretrained: bool = True, allow_pickle: bool = False, **kwargs: Any) -> torch.nn.Module:
    """timm.create_model for ref (see resolve_model_name), with its weights; 'org/repo@rev' pulls from the Hub."""
    with allow_pickle_weights(allow_pickle):
        return timm.create_model(resolve_model_name(ref), pretrained=pretrained, **kwargs)
