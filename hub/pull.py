"""Load MA-Net models by any name a user has for them: registered name, Hub id, or a local folder."""
import json
import re
from pathlib import Path
from typing import Any, Dict

import timm
import torch
from huggingface_hub import hf_hub_download
from timm.models import split_model_name_tag

from ..models import allow_pickle_weights, close_matches
from .cards import find_run

__all__ = ['checkpoint_config', 'load', 'resolve_model_name']

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


def checkpoint_config(name: str) -> Dict[str, Any]:
    """The config.json behind a resolved model name ('local-dir:' or 'hf-hub:'); {} for a registered name."""
    if name.startswith('local-dir:'):
        return json.loads((Path(name[len('local-dir:'):]) / 'config.json').read_text())
    if name.startswith('hf-hub:'):
        repo_id, _, revision = name[len('hf-hub:'):].partition('@')
        return json.loads(Path(hf_hub_download(repo_id, 'config.json', revision=revision or None)).read_text())
    return {}
