"""Where MA-Net checkpoint weights come from, whether they are safe to load, and whether they fit.

timm loads pretrained weights itself (Hub repo, local folder, file, URL). Before it does, MA-Net
checks that the weights are safetensors: pickle files can run code when unpickled, so a checkpoint
with only pickle weights is refused unless the user opts in (``allow_pickle_weights()`` or
``MAGSD_TIMM_ALLOW_PICKLE=1``; timm then still unpickles with ``weights_only=True``). After loading,
every tensor is checked against the architecture and a mismatch is reported by name.
"""
import contextlib
import contextvars
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional

import torch
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from timm.models import get_model_traits

from ..errors import BadInputError
from ..utils.hub_files import hub_file

__all__ = ['UnsafeWeightsError', 'WeightsMismatchError', 'allow_pickle_weights', 'check_state_dict',
           'require_safe_weights', 'said', 'tensor_problems']

SAFE_WEIGHTS = 'model.safetensors'
ALLOW_PICKLE_ENV = 'MAGSD_TIMM_ALLOW_PICKLE'
_allow_pickle: contextvars.ContextVar[bool] = contextvars.ContextVar('allow_pickle', default=False)


class UnsafeWeightsError(BadInputError):
    """The checkpoint holds only pickle weights and the user did not opt in to unpickling them."""


class WeightsMismatchError(BadInputError):
    """The checkpoint's tensors do not fit the architecture built from its config, or hold no usable numbers."""


@contextlib.contextmanager
def allow_pickle_weights(allow: bool = True) -> Iterator[None]:
    """Within the block, checkpoints with only pickle weights are loaded (timm unpickles with weights_only)."""
    token = _allow_pickle.set(allow)
    try:
        yield
    finally:
        _allow_pickle.reset(token)


def _pickle_allowed() -> bool:
    return _allow_pickle.get() or os.environ.get(ALLOW_PICKLE_ENV, '').lower() in ('1', 'true', 'yes')


def _refuse(where: str, found: str) -> None:
    if not _pickle_allowed():
        raise UnsafeWeightsError(
            f'{where} has no {SAFE_WEIGHTS}, only pickle weights ({found}); unpickling a file can run code, so '
            f'it is not loaded. Convert it to safetensors, or opt in if you trust it: '
            f'magsd_timm.load(..., allow_pickle=True), `with magsd_timm.models.allow_pickle_weights():` '
            f'or {ALLOW_PICKLE_ENV}=1.')


def require_safe_weights(pretrained_cfg: Dict[str, Any], cache_dir: Optional[str] = None) -> None:
    """Refuse a pretrained source that would be unpickled, unless the user opted in."""
    source, file, url = pretrained_cfg.get('source'), pretrained_cfg.get('file'), pretrained_cfg.get('url')
    hub_id = pretrained_cfg.get('hf_hub_id')
    if pretrained_cfg.get('state_dict') is not None:
        return
    if source == 'local-dir' or (file and source != 'hf-hub'):
        path = Path(file)
        if path.is_dir():
            pickles = sorted(p.name for p in path.iterdir() if p.suffix in ('.bin', '.pth', '.pt', '.ckpt'))
            if pickles and not (path / SAFE_WEIGHTS).is_file():
                _refuse(f"Checkpoint folder '{path}'", ', '.join(pickles))
        elif path.suffix != '.safetensors':
            _refuse(f"Checkpoint file '{path}'", path.name)
        return
    if hub_id:
        repo_id, _, revision = hub_id.partition('@')
        filename = pretrained_cfg.get('hf_hub_filename') or SAFE_WEIGHTS
        if filename not in (SAFE_WEIGHTS, 'pytorch_model.bin'):  # any other file name is loaded as it is named
            if not filename.endswith('.safetensors'):
                _refuse(f"Hub repo '{hub_id}'", filename)
            return
        filename = SAFE_WEIGHTS  # timm loads the safetensors alternative of pytorch_model.bin first when it exists
        try:
            hub_file(repo_id, filename, revision or None, cache_dir=cache_dir)
        except EntryNotFoundError as e:
            if isinstance(e, LocalEntryNotFoundError):  # offline and not cached: not evidence of pickle weights
                raise
            _refuse(f"Hub repo '{hub_id}'", pretrained_cfg.get('hf_hub_filename') or 'pytorch_model.bin')
        return
    if url and not url.split('?')[0].endswith('.safetensors'):
        _refuse(f"Weights URL '{url}'", url.rsplit('/', 1)[-1])


def tensor_problems(state: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor],
                    adapted: Iterable[str] = ()) -> Dict[str, List[str]]:
    """What keeps loaded tensors from being a model's, by kind (empty lists when they fit): values that are not
    usable numbers (another dtype kind, NaN, infinities), shapes, and names missing or unknown; names in adapted
    are the loader's to fit (timm's stem and head adaptation)."""
    adapted = set(adapted)
    return {
        'unusable': [f'{k}: {v.dtype}, not floating point' for k, v in state.items()
                     if k in expected and expected[k].is_floating_point() and not v.is_floating_point()]
        + [f'{k}: holds NaN or infinite values' for k, v in state.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())],
        'shape mismatch': [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}' for k, v in state.items()
                           if k in expected and k not in adapted and v.shape != expected[k].shape],
        'missing from the checkpoint': [k for k in expected if k not in state and k not in adapted],
        'not in the model': [k for k in state if k not in expected and k not in adapted],
    }


def said(problems: Dict[str, List[str]]) -> str:
    """tensor_problems as one line ('' when there are none): each kind, then up to 10 names."""
    parts = []
    for kind, names in problems.items():
        if names:
            more = f' (+{len(names) - 10} more)' if len(names) > 10 else ''
            parts.append(f'{kind}: ' + '; '.join(names[:10]) + more)
    return ' | '.join(parts)


def check_state_dict(state_dict: Dict[str, torch.Tensor], model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """A timm pretrained filter: pass the state dict through if it fits the model, else name what does not fit."""
    cfg, traits = model.pretrained_cfg, get_model_traits(model)
    # timm adapts these after the filter: the stem to other in_chans, the head to other num_classes
    adapted = set()
    if traits['in_chans'] != (cfg.get('input_size') or (None,))[0]:
        adapted.add(traits.get('first_conv', cfg.get('first_conv')) + '.weight')
    if traits['num_classes'] != cfg.get('num_classes'):
        adapted.update(k for k in state_dict if k.startswith(cfg['classifier'] + '.'))
    problems = tensor_problems(state_dict, model.state_dict(), adapted)
    if problems['unusable']:
        raise WeightsMismatchError(
            f"Checkpoint weights of {cfg.get('architecture')} are not usable floating-point numbers: "
            + said({'unusable': problems['unusable']})[len('unusable: '):]
            + '. The checkpoint is corrupt or was saved from a diverged run.')
    if said(problems):
        built = f"backbone {getattr(model, 'backbone_name', '?')}, {getattr(model, 'num_maps', '?')} attention maps"
        raise WeightsMismatchError(
            f"Checkpoint weights do not fit {cfg.get('architecture')} ({built}, {traits['num_classes']} classes): "
            + said(problems))
    return state_dict
