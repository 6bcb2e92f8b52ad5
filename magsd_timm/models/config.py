"""What an MA-Net config may ask for, checked before anything is built or believed.

A config.json comes from a Hub repo or a folder somebody else wrote, so every value that sizes an
allocation (attention maps, classes, input size) is bounded, every value that changes a prediction
(the temperature) is checked, and unknown model arguments are refused by name. A checkpoint written
by the trainer carries a ``training`` record (data, epochs, image size, ...): that record is what
tells a trained classifier from one whose head never saw a radiograph.
"""
import math
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from ..console import BadInputError

__all__ = [
    'MAX_HEAD_WEIGHTS', 'MAX_INPUT_SIDE', 'MAX_NUM_CLASSES', 'MAX_NUM_MAPS', 'MIN_INPUT_SIDE', 'ConfigError',
    'UnknownModelArgumentError',
    'check_checkpoint_config', 'check_head_size', 'check_input_size', 'check_model_args', 'check_temperature', 'training_record',
]

MAX_NUM_MAPS = 1024          # the paper uses 32; WS-DAN at most 64
MAX_NUM_CLASSES = 10_000
MAX_IN_CHANS = 4
MAX_HEAD_WEIGHTS = 2 ** 28   # attention maps x top channels x classes: 1 GiB of fp32 weights
MIN_INPUT_SIDE, MAX_INPUT_SIDE = 32, 2048
MAX_ATTN_LEVELS = 8


class ConfigError(BadInputError):
    """A model config or checkpoint config that asks for something invalid or unbounded."""


class UnknownModelArgumentError(ConfigError, TypeError):
    """A model argument MA-Net does not take: a TypeError, as timm's contract has it for any model."""


def _where(where: Optional[str]) -> str:
    return f'{where}: ' if where else ''


def check_temperature(value: Any, where: Optional[str] = None) -> float:
    """The temperature as a float, or ConfigError when it is not a finite positive number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f'{_where(where)}temperature {value!r} is invalid: it must be a finite number > 0 '
                          '(1 means uncalibrated; magsd evaluate --calibrate fits one).')
    return float(value)


def check_input_size(input_size: Any, where: Optional[str] = None) -> Tuple[int, int, int]:
    """A (channels, height, width) input size within the bounds, or ConfigError."""
    ok = (isinstance(input_size, (list, tuple)) and len(input_size) == 3
          and all(isinstance(v, int) and not isinstance(v, bool) for v in input_size))
    if ok:
        chans, height, width = input_size
        ok = 1 <= chans <= MAX_IN_CHANS and all(MIN_INPUT_SIDE <= s <= MAX_INPUT_SIDE for s in (height, width))
    if not ok:
        raise ConfigError(
            f'{_where(where)}input_size {input_size!r} is invalid: expected [channels, height, width] with 1 to '
            f'{MAX_IN_CHANS} channels and sides of {MIN_INPUT_SIDE} to {MAX_INPUT_SIDE} px.')
    return tuple(input_size)


def _int_in(name: str, value: Any, low: int, high: int, where: Optional[str]) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f'{_where(where)}{name} {value!r} is invalid: expected an integer from {low} to {high}.')


def check_model_args(args: Mapping[str, Any], allowed: Iterable[str], where: Optional[str] = None) -> None:
    """Refuse unknown model arguments by name, and values out of bounds, before anything is allocated."""
    allowed = set(allowed)
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise UnknownModelArgumentError(f"{_where(where)}unknown model argument(s) {', '.join(unknown)}; MA-Net takes "
                          f"{', '.join(sorted(allowed))}.")
    if 'num_maps' in args:
        _int_in('num_maps', args['num_maps'], 1, MAX_NUM_MAPS, where)
    if 'num_classes' in args:
        _int_in('num_classes', args['num_classes'], 0, MAX_NUM_CLASSES, where)
    if 'in_chans' in args:
        _int_in('in_chans', args['in_chans'], 1, MAX_IN_CHANS, where)
    for name in ('drop_rate', 'drop_path_rate'):
        value = args.get(name, 0.)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ConfigError(f'{_where(where)}{name} {value!r} is invalid: expected a number in [0, 1).')
    levels = args.get('attn_levels', ())
    if (not isinstance(levels, (list, tuple)) or len(levels) > MAX_ATTN_LEVELS
            or any(isinstance(v, bool) or not isinstance(v, int) for v in levels)):
        raise ConfigError(f'{_where(where)}attn_levels {levels!r} is invalid: expected up to {MAX_ATTN_LEVELS} '
                          'integer feature levels.')
    if not isinstance(args.get('backbone', ''), str):
        raise ConfigError(f"{_where(where)}backbone {args['backbone']!r} is invalid: expected a timm model name.")
    if not isinstance(args.get('backbone_kwargs') or {}, dict):
        raise ConfigError(f'{_where(where)}backbone_kwargs {args["backbone_kwargs"]!r} is invalid: expected an '
                          'object of timm.create_model arguments.')


def check_head_size(num_maps: int, channels: int, num_classes: int) -> None:
    """Refuse a BAP head whose classifier would hold more than MAX_HEAD_WEIGHTS weights."""
    weights = num_maps * channels * max(num_classes, 1)
    if weights > MAX_HEAD_WEIGHTS:
        raise ConfigError(
            f'{num_maps} attention maps x {channels} channels x {num_classes} classes make a classifier of '
            f'{weights:,} weights, over the {MAX_HEAD_WEIGHTS:,} limit: use fewer maps or classes.')


def _check_label_names(names: Any, num_classes: Any, where: Optional[str]) -> None:
    if names is None:
        return
    if (not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n.strip() for n in names)
            or len(set(names)) != len(names)):
        raise ConfigError(f'{_where(where)}label_names {names!r} is invalid: expected distinct, non-empty names.')
    if isinstance(num_classes, int) and len(names) != num_classes:
        raise ConfigError(f'{_where(where)}{len(names)} label_names for {num_classes} classes.')


def check_checkpoint_config(config: Any, where: Optional[str] = None) -> Dict[str, Any]:
    """A checkpoint's config.json as a dict, or ConfigError naming the first invalid value."""
    if not isinstance(config, dict):
        raise ConfigError(f'{_where(where)}expected a JSON object, not {type(config).__name__}.')
    if not isinstance(config.get('architecture'), str):
        raise ConfigError(f'{_where(where)}no architecture (the timm model name) is given.')
    if 'num_classes' in config:
        _int_in('num_classes', config['num_classes'], 0, MAX_NUM_CLASSES, where)
    _check_label_names(config.get('label_names'), config.get('num_classes'), where)
    if not isinstance(config.get('model_args', {}), dict):
        raise ConfigError(f'{_where(where)}model_args must be an object.')
    pretrained_cfg = config.get('pretrained_cfg', {})
    if not isinstance(pretrained_cfg, dict):
        raise ConfigError(f'{_where(where)}pretrained_cfg must be an object.')
    if 'input_size' in pretrained_cfg:
        check_input_size(pretrained_cfg['input_size'], where)
    if 'temperature' in config:
        check_temperature(config['temperature'], where)
    if 'training' in config and not isinstance(config['training'], dict):
        raise ConfigError(f'{_where(where)}training must be an object (what the classifier was trained on).')
    return config


def training_record(config: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """What a checkpoint's classifier was trained on (data, epochs, image size), or None if it never was."""
    record = config.get('training')
    return dict(record) if isinstance(record, dict) and record else None

