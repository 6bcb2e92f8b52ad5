"""Suite `maps`: which heat map shows where a trained model looks. Every map of `magsd predict --map`
(explain.MAPS) of each --maps-models model (one run per seed, say; default: the published model), on
the films of the --data test split that have --boxes (lung boxes): the share of the map inside the
boxes and the pointing game (95% intervals over patients; the mean over the models), the side of the
attention maps, and the time of computing each map on a batch of those films against the model's
forward pass alone (prediction). And where MAG-SD's attention-guided augmentations act on those films
(the regions of method.augment.attention_regions_from_uniforms, randomness drawn from seed 0): the
share of each region inside the boxes, against the boxes' share of the image, which is what a region
placed at random would hold on average. Runs only when named.
"""
import argparse
import statistics
from typing import Any, Dict, List, Tuple

import torch

from magsd_timm.errors import BadInputError, display
from magsd_timm.utils.tables import markdown_table, shown_path

from .common import interleaved_medians, meets_or_misses

MASS_TARGET = 0.75  # share of the default map inside the lung boxes, and at least Grad-CAM's on the same model
POINTING_TARGET = 0.90  # the default map's pointing-game hit rate
SIDE_TARGET = 7  # the attention maps' side at which the targets count
TIME_TARGET = 1.5  # the default map's time over the forward pass alone


def _load(ref: str, args: argparse.Namespace) -> Tuple[torch.nn.Module, Any]:
    """The model and its test split, preprocessed as it was trained."""
    from magsd_timm.data import build_transforms, open_dataset, resolve_cxr_data_config
    from magsd_timm.hub.pull import checkpoint_config, load, load_lung_crop, resolve_model_name

    name = resolve_model_name(ref)
    config = checkpoint_config(name)
    model = load(name, config=config).eval().to(args.device)
    return model, open_dataset(args.data, 'test', build_transforms(resolve_cxr_data_config(model),
                                                                    crop=load_lung_crop(name, config)))


def _measure(model: torch.nn.Module, dataset, args: argparse.Namespace, boxes) -> Dict[str, Any]:
    """One model's localization report and time of each map, and its attention maps' side."""
    from magsd_timm.evaluation.explain import heat_maps
    from magsd_timm.evaluation.localization import boxed_batches, boxes_in_view, localization_report
    from magsd_timm.evaluation.map_names import MAPS

    shown = MAPS if hasattr(model, 'forward_with_attention') else ['grad-cam']  # the others would be Grad-CAM again
    reports = {m: localization_report(model, dataset, boxes, args.batch_size, args.bootstrap, map_name=m)
               for m in shown}
    regions = _augmentation_regions(model, dataset, boxes, args) if hasattr(model, 'forward_with_attention') else None
    images = next(boxed_batches(dataset, boxes_in_view(dataset, boxes), args.batch_size))[1].to(args.device)
    attention = heat_maps(model, images, 'mean').attention
    steps = {'forward pass alone': torch.no_grad()(lambda: model(images)),
             **{m: (lambda m=m: heat_maps(model, images, m)) for m in shown}}
    seconds = interleaved_medians(steps, max(1., args.min_run_time / 4), args.min_rounds)
    forward = seconds.pop('forward pass alone')
    return dict(reports=reports, times={m: s / forward for m, s in seconds.items()}, forward=forward / len(images),
                side=None if attention is None else int(attention.shape[-1]), images=len(images), regions=regions)


@torch.no_grad()
def _augmentation_regions(model, dataset, boxes, args: argparse.Namespace) -> Dict[str, float]:
    """The mean share of each augmentation's region inside the boxes, over the films with boxes."""
    from magsd_timm.evaluation.localization import boxed_batches, boxes_in_view
    from magsd_timm.method.augment import attention_regions_from_uniforms, draw_uniforms
    from magsd_timm.method.objective import VIEW_NAMES

    generator = torch.Generator().manual_seed(0)
    shares = []
    for _, images, masks in boxed_batches(dataset, boxes_in_view(dataset, boxes), args.batch_size):
        attention = model.forward_with_attention(images.to(args.device))[1].cpu()
        regions = attention_regions_from_uniforms(attention, draw_uniforms(len(images), generator),
                                                  tuple(images.shape[-2:]))
        area = regions.flatten(2).sum(dim=2).float()
        inside = (regions & masks).flatten(2).sum(dim=2).float()
        shares.append(torch.where(area > 0, inside / area.clamp(min=1), torch.full_like(area, float('nan'))))
    share = torch.cat(shares).nanmean(dim=0)
    return dict(zip(VIEW_NAMES, map(float, share)))


def _cell(reports: List[Dict[str, Any]], key: str) -> str:
    values = [r[key] for r in reports]
    each = '; '.join(f"{r[key]:.3f} [{r[f'{key}_interval'][0]:.3f}, {r[f'{key}_interval'][1]:.3f}]" for r in reports)
    return f'**{statistics.mean(values):.3f}**' + (f' ({each})' if len(reports) > 1 else
                                                     f" [{reports[0][f'{key}_interval'][0]:.3f}, "
                                                     f"{reports[0][f'{key}_interval'][1]:.3f}]")


def _verdict(measured: List[Dict[str, Any]]) -> str:
    """The default map's targets, met or missed, over the models."""
    from magsd_timm.evaluation.map_names import DEFAULT_MAP

    mean = {m: {k: statistics.mean(r['reports'][m][k] for r in measured) for k in ('mass_in_boxes', 'pointing_hit_rate')}
            for m in measured[0]['reports']}
    default, sides = mean[DEFAULT_MAP], [r['side'] for r in measured]
    slowest = max(r['times'][DEFAULT_MAP] for r in measured)
    checks = [
        (f"share inside the boxes >= {MASS_TARGET} and >= grad-cam's ({mean['grad-cam']['mass_in_boxes']:.3f})",
         default['mass_in_boxes'] >= MASS_TARGET and default['mass_in_boxes'] >= mean['grad-cam']['mass_in_boxes']),
        (f'pointing game >= {POINTING_TARGET}', default['pointing_hit_rate'] >= POINTING_TARGET),
        (f'attention maps of at least {SIDE_TARGET} x {SIDE_TARGET} (here {", ".join(map(str, sides))})',
         all(s is not None and s >= SIDE_TARGET for s in sides)),
        (f'time at most {TIME_TARGET}x the forward pass (slowest model: {slowest:.2f}x)', slowest <= TIME_TARGET),
    ]
    return f'The default map ({DEFAULT_MAP}): ' + '; '.join(f'{what}: {meets_or_misses(ok)}' for what, ok in checks) + '.'


def run(args: argparse.Namespace) -> str:
    """Mass in the boxes, pointing game and time of every map, for each model and over them."""
    from magsd_timm.evaluation.localization import load_boxes
    from magsd_timm.evaluation.map_names import DEFAULT_MAP

    if args.data is None or args.boxes is None:
        raise BadInputError('--suite maps needs --data PREPARED (recipes/prepare_data.py) and --boxes COCO_JSON')
    boxes = load_boxes(args.boxes)
    loaded = [_load(ref, args) for ref in args.maps_models]
    if len({hasattr(model, 'forward_with_attention') for model, _ in loaded}) > 1:
        raise BadInputError('--maps-models: give models with attention maps (MA-Nets) or models without, not both: '
                            'the figures are means over the models')
    measured = [_measure(model, dataset, args, boxes) for model, dataset in loaded]
    shown = list(measured[0]['reports'])
    rows = []
    for m in shown:
        reports = [r['reports'][m] for r in measured]
        rows.append([f'`{m}`' + (' (default)' if m == DEFAULT_MAP else ''), _cell(reports, 'mass_in_boxes'),
                     _cell(reports, 'pointing_hit_rate'), sum(r['empty_maps'] for r in reports),
                     f"{statistics.mean(r['times'][m] for r in measured):.2f}x"])
    first = measured[0]['reports'][shown[0]]
    verdict = (_verdict(measured) if DEFAULT_MAP in shown else
               'Models without attention maps: Grad-CAM of the predicted class is their only map.')
    augmented = [r['regions'] for r in measured if r['regions'] is not None]
    region_lines = ['', 'Where the attention-guided augmentations act on these films (share of each region inside the '
                        f"boxes; a region placed at random: about {first['box_area_share']:.3f}):", '',
                    markdown_table(['model', *augmented[0]], [
                        [f'`{display(ref)}`', *(f'{v:.3f}' for v in r['regions'].values())]
                        for ref, r in zip(args.maps_models, measured) if r['regions'] is not None])] if augmented else []
    return '\n'.join([
        f"{len(measured)} model(s): {', '.join(f'`{display(ref)}`' for ref in args.maps_models)}; the "
        f"{first['num_images']} films of the test split of {display(shown_path(args.data))} with boxes in "
        f"`{display(shown_path(args.boxes))}` (they cover {first['box_area_share']:.3f} of the image, what a uniform "
        f'map would put inside them); intervals: 95% bootstrap over patients ({args.bootstrap} resamples), one per '
        f"model; time: median of a batch of {measured[0]['images']} films, the forward pass alone taking "
        f"{statistics.mean(r['forward'] for r in measured) * 1000:.1f} ms per film.", '',
        markdown_table(['map', 'share inside the boxes (mean; each model [95% CI])', 'pointing game',
                        'empty maps (not scored)', 'time over the forward pass'], rows), '',
        verdict, *region_lines])
