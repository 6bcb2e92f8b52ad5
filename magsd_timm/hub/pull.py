"""Load MA-Net models by any name a user has for them: registered name, Hub id, or a local folder.

A config.json from a Hub repo or a folder is untrusted input: revisions are checked before any
download, and the config is checked (bounds, temperature, model arguments) before it builds anything.
"""
import contextlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

import timm
import torch
from huggingface_hub.errors import EntryNotFoundError
from timm.models import resolve_pretrained_cfg, split_model_name_tag

from ..errors import BadInputError, display
from ..models import allow_pickle_weights, close_matches
from ..models.config import ConfigError, check_checkpoint_config, check_model_size
from ..models.lung_detector import DETECTOR_FILES, LungDetector, load_detector
from ..models.magsd import HUB_WEIGHTS
from ..models.offline_weights import create_pretrained
from ..models.published import published_file
from ..run_records import find_run
from ..utils.hub_files import HUB_PREFIX, hub_file, hub_when_reachable, parse_hub_ref

__all__ = ['checkpoint_config', 'load', 'load_lung_crop', 'resolve_model_name', 'shown_model']

_HUB_ID = re.compile(r'[\w.-]+/[\w.-]+(@.+)?')


def _looks_like_path(ref: str) -> bool:
    """Whether a model reference that names nothing existing was meant as a local folder, not a Hub id."""
    head = ref.partition('@')[0]
    return (head.startswith(('.', '/', '~', '\\')) or head.count('/') > 1 or '\\' in head
            or ('/' in head and Path(head.split('/')[0]).is_dir()))


def resolve_model_name(ref: str) -> str:
    """The timm model name of a registered name, an 'hf-hub:'/'local-dir:' name, 'org/repo[@rev]' or a local folder."""
    if ref.startswith(HUB_PREFIX):
        parse_hub_ref(ref[len(HUB_PREFIX):])
        return ref
    if ref.startswith('local-dir:'):
        return ref
    if Path(ref).is_dir():  # a training output (its best/) or a checkpoint folder
        return f'local-dir:{find_run(ref).checkpoint}'
    if timm.is_model(split_model_name_tag(ref)[0]):
        return ref
    if _looks_like_path(ref):
        raise FileNotFoundError(f"{display(ref)}: no such checkpoint folder (a Hub repo is named ORG/NAME, or "
                                'hf-hub:ORG/NAME).')
    if _HUB_ID.fullmatch(ref):
        parse_hub_ref(ref)
        return f'{HUB_PREFIX}{ref}'
    raise BadInputError(f"Unknown model '{display(ref)}': not a registered model, a Hub id (org/name[@revision]) or "
                        f"a local folder.{close_matches(ref, timm.list_models('magsd_*'))}")


def shown_model(name: str) -> str:
    """A resolved model name as users write it: a local checkpoint's folder without timm's 'local-dir:' prefix."""
    return display(name[len('local-dir:'):] if name.startswith('local-dir:') else name)


def _hub_id(name: str) -> Optional[str]:
    """The Hub repo (and revision) behind a resolved model name that is not a local folder, or None."""
    hub_id = name[len('hf-hub:'):] if name.startswith('hf-hub:') else None
    if hub_id is None and split_model_name_tag(name)[0].startswith('magsd_') and timm.is_model(name.split('.')[0]):
        cfg = resolve_pretrained_cfg(name)
        hub_id = cfg.hf_hub_id if cfg is not None else None  # a published MA-Net tag (HUB_WEIGHTS)
    return hub_id


def _config_file(name: str) -> Optional[Path]:
    """Where the config.json behind a resolved model name lies (downloaded if it is on the Hub), or None."""
    if name.startswith('local-dir:'):
        path = Path(name[len('local-dir:'):]) / 'config.json'
        if not path.is_file():
            raise FileNotFoundError(f'{display(path)}: no such checkpoint config.')
        return path
    entry = HUB_WEIGHTS.get(name)
    if entry is not None:  # a published tag: from the Hub when it answers, else the package's copy
        return published_file(name, entry, 'config.json')[0]
    hub_id = _hub_id(name)
    if hub_id is None:
        return None
    repo_id, revision = parse_hub_ref(hub_id)
    return hub_file(repo_id, 'config.json', revision)


def load_lung_crop(name: str, config: Dict[str, Any]) -> Optional[LungDetector]:
    """The lung detector a checkpoint cuts films with (its config.json lung_crop), checked to be the one it was
    trained with; None for a model that sees whole films. Missing detector files are refused, never skipped."""
    record = config.get('lung_crop')
    if record is None:
        return None
    if name.startswith('local-dir:'):
        folder = Path(name[len('local-dir:'):])
    else:
        repo_id, revision = parse_hub_ref(_hub_id(name))
        try:
            folder = Path([hub_file(repo_id, file, revision) for file in DETECTOR_FILES][0]).parent
        except EntryNotFoundError:
            folder = None
    missing = [file for file in DETECTOR_FILES if folder is None or not (folder / file).is_file()]
    if missing:
        raise BadInputError(f"{shown_model(name)}: the model cuts films to their lungs (config.json lung_crop), but "
                            f"{' and '.join(missing)} {'are' if len(missing) > 1 else 'is'} not beside it: without "
                            'the detector it was trained with, its answers would be about other images.')
    return load_detector(folder, record)


def checkpoint_config(name: str) -> Dict[str, Any]:
    """The checked config.json behind a resolved model name; {} for a registered name without published weights."""
    hub_id = None if name in HUB_WEIGHTS else _hub_id(name)  # a published tag falls back on its installed copy
    with hub_when_reachable(shown_model(name)) if hub_id else contextlib.nullcontext():
        path = _config_file(name)
    if path is None:
        return {}
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f'{display(path)}: not a valid JSON config ({e}).') from e
    return check_checkpoint_config(config, display(path))


@contextlib.contextmanager
def _weights_source(ref: str, name: str, pretrained: bool) -> Iterator[Callable[..., torch.nn.Module]]:
    """How load builds name: a Hub repo's weights only if the Hub answers now, else from its cache (one error when the
    cache lacks them); a registered non-MA-Net name's ImageNet weights by the rule every pretrained backbone follows
    (models.offline_weights.create_pretrained); anything else by timm.create_model as it is."""
    if not pretrained or name.startswith('local-dir:') or name in HUB_WEIGHTS or \
            split_model_name_tag(name)[0].startswith('magsd_'):  # MA-Nets' entrypoints ask the Hub by the same rule
        yield timm.create_model
    elif name.startswith(HUB_PREFIX):
        with hub_when_reachable(shown_model(ref)):
            yield timm.create_model
    else:
        yield lambda model_name, pretrained, **kwargs: create_pretrained(model_name, **kwargs)


def load(ref: str, pretrained: bool = True, allow_pickle: bool = False, config: Optional[Dict[str, Any]] = None,
         **kwargs: Any) -> torch.nn.Module:
    """timm.create_model for ref (see resolve_model_name), with its weights; 'org/repo@rev' pulls from the Hub.

    config: ref's checked config.json when the caller has read it already (checkpoint_config), so it is
    not read twice.
    """
    name = resolve_model_name(ref)
    if config is None:
        config = checkpoint_config(name) if name.startswith(('local-dir:', 'hf-hub:')) or name in HUB_WEIGHTS else {}
    if config and not timm.is_model(config['architecture']):
        raise ConfigError(f"{shown_model(ref)}: config.json names architecture '{config['architecture']}', which is not a "
                          f"registered timm model.{close_matches(config['architecture'], timm.list_models())}")
    if config:  # what it would allocate, before anything is
        check_model_size(config, shown_model(ref))
    if name in HUB_WEIGHTS:  # a published tag: built as its config.json records (timm reads it for hf-hub: names)
        kwargs = {**config.get('model_args', {}), **kwargs}
    with allow_pickle_weights(allow_pickle), _weights_source(ref, name, pretrained) as create:
        try:
            return create(name, pretrained=pretrained, **kwargs)
        except TypeError as e:
            if not config or isinstance(e, ConfigError):  # a ConfigError already names the argument
                raise
            raise ConfigError(f"{shown_model(ref)}: config.json's model_args {config.get('model_args', {})} do not fit "
                              f"architecture '{config['architecture']}' ({e}).") from e
