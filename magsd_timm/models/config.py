"""What an MA-Net config may ask for, checked before anything is built or believed.

A config.json comes from a Hub repo or a folder somebody else wrote, so every value that sizes an
allocation (attention maps, classes, input size) is bounded, every value that changes a prediction
(the temperature) is checked, and unknown model arguments are refused by name. A checkpoint written
by the trainer carries a ``training`` record (data, epochs, image size, ...): that record is what
tells a trained classifier from one whose head never saw a radiograph.
"""
import math
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from ..errors import BadInputError

__all__ = [
    'BACKBONE_KWARGS', 'MAX_HEAD_WEIGHTS', 'MAX_INPUT_SIDE', 'MAX_NUM_CLASSES', 'MAX_NUM_MAPS', 'MIN_INPUT_SIDE',
    'TEMPERATURE_RANGE', 'ConfigError', 'UnknownModelArgumentError', 'DETECTOR_ARCHITECTURES', 'DETECTOR_MARGIN_RANGE',
    'DETECTOR_SIZE_RANGE', 'check_crop_record', 'check_detector_config',
    'MAX_PARAMETERS', 'check_checkpoint_config', 'check_data_config', 'check_head_size', 'check_input_fits',
    'check_input_size',
    'check_model_args', 'check_model_size',
    'check_temperature', 'is_finite_number', 'temperature_of', 'training_record',
]

MAX_NUM_MAPS = 1024          # the paper uses 32; WS-DAN at most 64
MAX_NUM_CLASSES = 10_000
MAX_IN_CHANS = 4
MAX_HEAD_WEIGHTS = 2 ** 28   # attention maps x top channels x classes: 1 GiB of fp32 weights
MIN_INPUT_SIDE, MAX_INPUT_SIDE = 32, 2048
MAX_ATTN_LEVELS = 8
# temperatures outside this range turn every probability into a one-hot or a uniform vector (and below
# about 1e-38, NaN): calibration searches it, and no config may hold another
TEMPERATURE_RANGE = (0.01, 100.)
# inputs are scaled to [0, 1] before normalising, so statistics outside these make no sense and an std
# near zero turns every pixel into an overflow
MEAN_RANGE, STD_RANGE = (-10., 10.), (1e-3, 10.)
INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic')  # what the tensor resize of the transforms takes
# pretrained_cfg keys that send timm's weight loading elsewhere (another file, a URL, another Hub file, code
# of the model's own): timm's save_for_hf drops them, so a checkpoint config that has them was made to
WEIGHT_SOURCES = ('url', 'file', 'hf_hub_id', 'hf_hub_filename', 'source', 'state_dict', 'custom_load')
# what a config may pass to the backbone's timm.create_model, and the values each may take: anything else
# (pretrained, pretrained_cfg_overlay, cache_dir, ...) could make a load fetch a URL, read or unpickle a
# local file, or allocate without bound
BACKBONE_KWARGS = {
    'out_indices': 'up to 8 integer feature levels from -8 to 16',
    'output_stride': 'one of 8, 16, 32',
    'dynamic_img_size': 'true or false',
    'img_size': f'an integer, or [height, width], from {MIN_INPUT_SIDE} to {MAX_INPUT_SIDE}',
    'drop_rate': 'a number in [0, 1)',
    'drop_path_rate': 'a number in [0, 1)',
}


# what a downloaded config may make a load allocate, estimated on the meta device before anything is: the
# largest registered MA-Net has 43 M parameters; 1e9 is 4 GB of fp32 weights
MAX_PARAMETERS = 1_000_000_000
MAX_SETTING = 65_536  # any whole number a config passes to a model: widths, depths, sizes, counts
# model arguments that would make a load read weights from elsewhere, or place the model, whatever the architecture
LOADING_ARGS = ('pretrained', 'pretrained_cfg', 'pretrained_cfg_overlay', 'checkpoint_path', 'cache_dir',
                'pretrained_strict', 'features_only', 'device', 'dtype')


class ConfigError(BadInputError):
    """A model config or checkpoint config that asks for something invalid or unbounded."""


class UnknownModelArgumentError(ConfigError, TypeError):
    """A model argument MA-Net does not take: a TypeError, as timm's contract has it for any model."""


def _where(where: Optional[str]) -> str:
    return f'{where}: ' if where else ''


def is_finite_number(value: Any) -> bool:
    """Whether a value read from JSON is a finite int or float (not a bool, a string or NaN)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_temperature(value: Any, where: Optional[str] = None) -> float:
    """The temperature as a float, or ConfigError when it is not a number within TEMPERATURE_RANGE."""
    low, high = TEMPERATURE_RANGE
    if not is_finite_number(value) or not low <= value <= high:
        raise ConfigError(f'{_where(where)}temperature {value!r} is invalid: it must be a number from {low:g} to '
                          f'{high:g} (1 means uncalibrated; magsd evaluate --calibrate fits one).')
    return float(value)


def temperature_of(config: Mapping[str, Any]) -> float:
    """The temperature a checkpoint's config holds (1.0 when uncalibrated); check_checkpoint_config refused an
    invalid one."""
    return float(config.get('temperature', 1.0))


def check_data_config(config: Mapping[str, Any], where: Optional[str] = None) -> None:
    """Refuse a data config (pretrained_cfg) whose statistics, crop or interpolation would make inputs nonsense."""
    for key, (low, high) in (('mean', MEAN_RANGE), ('std', STD_RANGE)):
        if key not in config:
            continue
        values = config[key]
        if (not isinstance(values, (list, tuple)) or not 1 <= len(values) <= MAX_IN_CHANS
                or not all(is_finite_number(v) and low <= v <= high for v in values)):
            raise ConfigError(f'{_where(where)}{key} {values!r} is invalid: expected 1 to {MAX_IN_CHANS} numbers from '
                              f'{low:g} to {high:g} (inputs are scaled to [0, 1] before normalising).')
    if 'crop_pct' in config and config['crop_pct'] is not None:
        if not is_finite_number(config['crop_pct']) or not 0.1 <= config['crop_pct'] <= 1:
            raise ConfigError(f"{_where(where)}crop_pct {config['crop_pct']!r} is invalid: expected a number from "
                              '0.1 to 1.')
    if 'interpolation' in config and config['interpolation'] not in INTERPOLATIONS:
        raise ConfigError(f"{_where(where)}interpolation {config['interpolation']!r} is invalid: expected one of "
                          f"{', '.join(INTERPOLATIONS)}.")


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
    for name in ('drop_rate', 'drop_path_rate', 'attn_drop_rate'):
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
    _check_backbone_kwargs(args.get('backbone_kwargs') or {}, where)


def _backbone_value_ok(name: str, value: Any) -> bool:
    def side(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and MIN_INPUT_SIDE <= v <= MAX_INPUT_SIDE

    if name == 'out_indices':
        return (isinstance(value, (list, tuple)) and 1 <= len(value) <= MAX_ATTN_LEVELS
                and all(isinstance(v, int) and not isinstance(v, bool) and -8 <= v <= 16 for v in value))
    if name == 'output_stride':
        return value in (8, 16, 32) and not isinstance(value, bool)
    if name == 'dynamic_img_size':
        return isinstance(value, bool)
    if name == 'img_size':
        return side(value) or (isinstance(value, (list, tuple)) and len(value) == 2 and all(map(side, value)))
    return is_finite_number(value) and 0 <= value < 1  # drop_rate, drop_path_rate


def _check_backbone_kwargs(kwargs: Mapping[str, Any], where: Optional[str]) -> None:
    """Only the known-safe backbone arguments, each within its bounds."""
    unknown = sorted(set(kwargs) - set(BACKBONE_KWARGS))
    if unknown:
        raise UnknownModelArgumentError(
            f"{_where(where)}backbone_kwargs {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not allowed: "
            f"a config may pass only {', '.join(BACKBONE_KWARGS)} to the backbone.")
    for name, value in kwargs.items():
        if not _backbone_value_ok(name, value):
            raise ConfigError(f'{_where(where)}backbone_kwargs {name} {value!r} is invalid: expected '
                              f'{BACKBONE_KWARGS[name]}.')


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
    inner = pretrained_cfg.get('label_names')
    if inner is not None and config.get('label_names') is not None and list(inner) != list(config['label_names']):
        raise ConfigError(f"{_where(where)}pretrained_cfg.label_names {list(inner)!r} is not label_names "
                          f"{list(config['label_names'])!r}: one of them is not the classifier's order.")
    if 'input_size' in pretrained_cfg:
        check_input_size(pretrained_cfg['input_size'], where)
    check_data_config(pretrained_cfg, where)
    named = sorted(k for k in WEIGHT_SOURCES if pretrained_cfg.get(k) not in (None, False))
    if named:
        raise ConfigError(f"{_where(where)}pretrained_cfg names where weights come from ({', '.join(named)}): a "
                          'checkpoint config may not (its weights are the ones beside it); timm never saves these.')
    if 'temperature' in config:
        check_temperature(config['temperature'], where)
    if 'lung_crop' in config:  # the detector its films are cut with: checked before any file of it is fetched
        check_crop_record(config['lung_crop'], where or 'config.json')
    if 'training' in config and not isinstance(config['training'], dict):
        raise ConfigError(f'{_where(where)}training must be an object (what the classifier was trained on).')
    return config


def _whole_numbers(value: Any, name: str) -> Iterable[Tuple[str, int]]:
    """Every whole number in a (nested) model argument, with where it sits."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield name, value
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield from _whole_numbers(inner, f'{name}.{key}')
    elif isinstance(value, (list, tuple)):
        for i, inner in enumerate(value):
            yield from _whole_numbers(inner, f'{name}[{i}]')


def check_model_size(config: Mapping[str, Any], where: Optional[str] = None) -> int:
    """The parameter count of the model a checked config builds, estimated on the meta device (nothing allocated);
    ConfigError when a model argument loads weights from elsewhere or is over MAX_SETTING, the count is over
    MAX_PARAMETERS, or the model cannot take the input size its config gives."""
    import timm

    args = dict(config.get('model_args') or {})
    loading = sorted(k for k in args if k in LOADING_ARGS)
    if loading:
        raise ConfigError(f"{_where(where)}model_args {', '.join(loading)}: a config may not say where weights come "
                          'from, how they load or where the model lives (its weights are the ones beside it).')
    # MA-Net bounds each of its own arguments, by name (check_model_args); any other model's are bounded here
    numbers = [] if str(config['architecture']).startswith('magsd_') else _whole_numbers(args, 'model_args')
    for name, value in numbers:
        if abs(value) > MAX_SETTING:
            raise ConfigError(f'{_where(where)}{name} {value} is over {MAX_SETTING:,}: no image model takes such a '
                              'setting, and building it could take all the memory there is.')
    try:
        model = timm.create_model(config['architecture'], pretrained=False, device='meta', **args)
    except TypeError:  # an argument the architecture does not take: the real build says which, by name
        return 0
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_PARAMETERS:
        raise ConfigError(f"{_where(where)}{config['architecture']} with these model_args has {count:,} parameters, "
                          f'over the {MAX_PARAMETERS:,} a checkpoint may ask for ({count * 4 / 2 ** 30:.1f} GiB of '
                          'fp32 weights).')
    input_size = tuple((config.get('pretrained_cfg') or {}).get('input_size') or model.pretrained_cfg['input_size'])
    check_input_fits(model, input_size, f"{_where(where)}{config['architecture']} with these model_args",
                     'of its own pretrained_cfg')
    return count


def check_input_fits(model: Any, input_size: Tuple[int, ...], what: str, whose: str = '') -> None:
    """ConfigError unless a model (on the meta device: nothing is computed) takes an input of input_size (C, H, W):
    a model built for another size (a ViT's img_size) would fail on every film, with an error of timm's."""
    import torch

    try:
        with torch.no_grad():
            model.eval()(torch.empty((1, *input_size), device='meta'))
    except (AssertionError, RuntimeError, ValueError) as e:
        raise ConfigError(f"{what} cannot take the input size {list(input_size)} {whose}".rstrip()
                          + f" ({' '.join(str(e).split())}).") from e


def training_record(config: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """What a checkpoint's classifier was trained on (data, epochs, image size), or None if it never was."""
    record = config.get('training')
    return dict(record) if isinstance(record, dict) and record else None


# the lung detector's settings (models/lung_detector.py), in a checkpoint's config.json lung_crop and its own file
DETECTOR_ARCHITECTURES = ('tf_efficientnet_lite0', 'resnet18', 'test_resnet')  # what a detector config may name
DETECTOR_SIZE_RANGE = (32, 512)
DETECTOR_MARGIN_RANGE = (0., 0.25)


def check_detector_config(config: Any, where: str) -> None:
    """Refuse a detector config that is not a mapping of a known architecture, a size and a margin in range, and a
    mean box of four shares, each start before its end."""
    if not isinstance(config, dict):
        raise BadInputError(f'{where}: not a mapping of detector settings.')
    architecture, size, margin = config.get('architecture'), config.get('img_size'), config.get('margin')
    if architecture not in DETECTOR_ARCHITECTURES:
        raise BadInputError(f'{where}: architecture {architecture!r} is not one of {", ".join(DETECTOR_ARCHITECTURES)}.')
    (low, high), (least, most) = DETECTOR_SIZE_RANGE, DETECTOR_MARGIN_RANGE
    if not isinstance(size, int) or isinstance(size, bool) or not low <= size <= high:
        raise BadInputError(f'{where}: img_size {size!r} must be a whole number from {low} to {high}.')
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not least <= margin <= most:
        raise BadInputError(f'{where}: margin {margin!r} must be a number from {least} to {most}.')
    box = config.get('mean_box')
    if not isinstance(box, list) or len(box) != 4 or not all(is_finite_number(v) and 0 <= v <= 1 for v in box) \
            or not (box[0] < box[2] and box[1] < box[3]):
        raise BadInputError(f'{where}: mean_box {box!r} must be four shares x0, y0, x1, y1 with x0 < x1 and y0 < y1.')


def check_crop_record(record: Any, where: str) -> None:
    """Refuse a config.json lung_crop that is not a detector's settings and a SHA-256 of its weights."""
    if not isinstance(record, dict) or set(record) != {'detector', 'sha256'}:
        raise BadInputError(f'{where}: lung_crop must be an object of the detector\'s settings (detector) and the '
                            'SHA-256 of its weights (sha256).')
    check_detector_config(record['detector'], f'{where}: lung_crop')
    digest = record['sha256']
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in '0123456789abcdef' for c in digest):
        raise BadInputError(f'{where}: lung_crop sha256 {digest!r} is not a SHA-256 (64 lower-case hex digits).')
