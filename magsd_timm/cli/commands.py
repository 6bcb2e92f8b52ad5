"""The bodies of magsd's commands (predict, evaluate, export, info, zoo): cli.py imports them once a command runs.

They load torch, timm and the package's models; the parser in cli.py does not, so --help is quick.
"""
import argparse
import contextlib
import csv
import io
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from ..errors import BadInputError, display, printable
from ..hub.pull import checkpoint_config, load, load_lung_crop, resolve_model_name, shown_model
from ..models.config import temperature_of, training_record
from ..models.lung_detector import DETECTOR_FILES
from ..utils.outputs import atomic_folder, check_no_overlap, exclusive_lock, recover_folder, strict_json, write_text_atomic
from .console import EXIT_NOT_REPRODUCED

__all__ = ['run_evaluate', 'run_export', 'run_info', 'run_predict', 'run_zoo']


def _device(name: str) -> torch.device:
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(name)


def _open(args: argparse.Namespace, backbone_weights: bool = True) -> Tuple[torch.nn.Module, str, Dict[str, Any]]:
    """The model with its checked weights, its resolved timm name, and its checked checkpoint config.

    Anything with a config.json (a folder, a Hub repo, a published tag) loads and checks its weights; a
    registered name without them gets its backbone's ImageNet weights when backbone_weights is set.
    """
    name = resolve_model_name(args.model)
    config = checkpoint_config(name)
    pretrained = bool(config) or backbone_weights
    if getattr(args, 'allow_untrained', True) is False and training_record(config) is None:
        raise BadInputError(
            f'{display(args.model)} has no trained classifier: its config records no training, so its class '
            'probabilities would mean nothing. Use a training output of recipes/train.py (or its best/ folder), '
            'or a Hub repo pushed from one with magsd-hub push-model; --allow-untrained runs it anyway.')
    model = load(name, pretrained=pretrained, allow_pickle=args.allow_pickle, config=config).eval()
    return model, name, config


def _transform(model: torch.nn.Module, name: str, config: Dict[str, Any]):
    """What every film goes through before the model, as it went in training: the model's data config, and the
    cut to the lungs by the detector the checkpoint carries, when it was trained so."""
    from ..data.transforms import build_transforms, resolve_cxr_data_config

    return build_transforms(resolve_cxr_data_config(model), crop=load_lung_crop(name, config))


def _label_names(model: torch.nn.Module) -> List[str]:
    names = model.pretrained_cfg.get('label_names')
    return list(names) if names and len(names) == model.num_classes else [str(i) for i in range(model.num_classes)]


# ---- predict ------------------------------------------------------------------------------------

def _format_of(output: Optional[str]) -> str:
    """The predictions' format an output file's name asks for: .json or .csv, else the table."""
    suffix = Path(output).suffix.lower() if output else ''
    return {'.json': 'json', '.csv': 'csv'}.get(suffix, 'table')


def _predictions_text(predictions, label_names: List[str], fmt: str, model: str, failures) -> str:
    if fmt == 'json':
        return strict_json({
            'model': display(model),
            'predictions': [{'file': display(p.path), 'predicted': p.predicted, 'probabilities': p.probabilities,
                             **({'heatmap': display(p.heatmap), 'map': p.heatmap_name} if p.heatmap else {})}
                            for p in predictions],
            'failed': [{'file': display(f), 'error': display(message)} for f, message in failures]})
    if fmt == 'csv':
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(['file', 'predicted', *label_names, 'heatmap', 'map'])
        for p in predictions:
            writer.writerow([display(p.path), p.predicted, *(f'{p.probabilities[c]:.6f}' for c in label_names),
                             display(p.heatmap) if p.heatmap else '', p.heatmap_name or ''])
        return buffer.getvalue()
    header = ['file', 'predicted', *label_names]
    rows = [[printable(p.path), p.predicted, *(f'{p.probabilities[c]:.4f}' for c in label_names)] for p in predictions]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return '\n'.join('  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]) + '\n'


def _map_name(args: argparse.Namespace, drawn: Optional[str], needs: str) -> str:
    """The --map asked for (or the default), refused where nothing is drawn with it."""
    from ..evaluation.map_names import DEFAULT_MAP

    if args.map is not None and not drawn:
        raise BadInputError(f'--map {args.map} chooses the heat map of {needs}, which was not given: add {needs}.')
    return args.map or DEFAULT_MAP


def run_predict(args: argparse.Namespace) -> int:
    from ..data.transforms import resolve_cxr_data_config
    from ..evaluation.inference import collect_inputs, predict_files

    map_name = _map_name(args, args.heatmap, '--heatmap')
    files, missing = collect_inputs(args.inputs)
    model, name, config = _open(args)
    data_config, label_names = resolve_cxr_data_config(model), _label_names(model)
    predictions, unreadable = predict_files(
        model.to(_device(args.device)), files, _transform(model, name, config), label_names, args.batch_size,
        args.tta, temperature_of(config), Path(args.heatmap) if args.heatmap else None, data_config, map_name)
    drawn = {p.heatmap_name for p in predictions if p.heatmap_name}
    if drawn - {map_name}:
        print(f"magsd predict: {shown_model(name)} has no attention maps, so the overlays show {', '.join(drawn)}, "
              f'not the {map_name} map.', file=sys.stderr)
    failures = [(pattern, f'{pattern}: {reason}') for pattern, reason in missing] + unreadable
    text = _predictions_text(predictions, label_names, args.format or _format_of(args.output), args.model, failures)
    if args.output:
        write_text_atomic(args.output, text, 'predictions')  # a failure keeps an earlier file whole
    else:
        sys.stdout.write(text)
    for _, message in failures:
        print(f'magsd predict: {printable(message)}', file=sys.stderr)
    if failures:
        print(f'magsd predict: {len(failures)} input(s) failed, {len(predictions)} image(s) predicted', file=sys.stderr)
    return 1 if failures else 0


# ---- evaluate -----------------------------------------------------------------------------------

def run_evaluate(args: argparse.Namespace) -> int:
    from ..data import open_dataset
    from ..evaluation.inference import probabilities
    from ..evaluation.metrics import classification_metrics
    from ..evaluation.report import align_labels, evaluate, fit_temperature, predict_dataset, save_temperature, write_reports
    from ..evaluation.shortcuts import hiding_report

    if args.calibrate and not resolve_model_name(args.model).startswith('local-dir:'):
        raise BadInputError(f'--calibrate saves the temperature into the checkpoint, so it needs a local checkpoint '
                         f'folder; {args.model} is not one. Download it first (hf download ORG/NAME --local-dir DIR).')
    map_name = _map_name(args, args.boxes, '--boxes')
    model, name, config = _open(args)
    model.to(_device(args.device))
    transform = _transform(model, name, config)
    class_names = _label_names(model)

    def split_logits(split: str):
        # a test set changed is said (report, stderr, exit 1), never silently
        dataset, unreadable = open_dataset(args.data, split, transform, seed=args.seed).readable()
        for _, why in unreadable[:10]:
            print(f'magsd evaluate: left out of the {split} split: {printable(why)}', file=sys.stderr)
        if not len(dataset):
            raise BadInputError(f'the {split} split of {display(args.data or "the sample")} has no readable image.')
        to_model = align_labels(class_names, dataset.class_names)
        logits, labels = predict_dataset(model, dataset, args.batch_size, args.tta)
        return dataset, logits, to_model[labels], unreadable

    temperature, calibration, unreadable = temperature_of(config), None, []
    if args.calibrate:
        _, cal_logits, cal_labels, skipped = split_logits(args.calibration_split)
        unreadable += skipped
        temperature = fit_temperature(cal_logits, cal_labels)
        calibration = {
            'split': args.calibration_split, 'num_images': len(cal_labels), 'temperature': temperature,
            'ece_before': classification_metrics(probabilities(cal_logits), cal_labels, class_names, True)['ece'],
            'ece_after': classification_metrics(probabilities(cal_logits, temperature), cal_labels, class_names,
                                                True)['ece']}
    dataset, logits, labels, skipped = split_logits(args.split)
    unreadable += skipped
    report, probs = evaluate(logits, labels, dataset, class_names, temperature, args.bootstrap, args.seed)
    report.update(model=args.model, data=args.data or 'sample', split=args.split, tta=args.tta,
                  unreadable=[dict(file=file, reason=why) for file, why in unreadable])
    if calibration:
        report['calibration'] = calibration
    output = Path(args.output or f'eval/{args.split}')
    with contextlib.ExitStack() as stack:  # one writer; the report whole or not at all, nothing of an earlier one left
        staging = stack.enter_context(_report_folder(output, [args.data] if args.data else []))
        boxes = None
        if args.boxes:
            from ..evaluation.localization import load_boxes, localization_report

            boxes = load_boxes(args.boxes)
            for problem in boxes.invalid[:10]:
                print(f'magsd evaluate: left out of {display(args.boxes)}: {display(problem)}', file=sys.stderr)
            report['localization'] = localization_report(
                model, dataset, boxes, args.batch_size, args.bootstrap, args.seed,
                staging / 'overlays' if args.overlays else None, args.overlays, map_name, class_names, temperature)
            if hasattr(model, 'forward_with_attention'):  # each of MA-Net's maps, beside the map the overlays show
                from ..evaluation.attention_maps import attention_map_report

                report['attention_maps'] = attention_map_report(model, dataset, boxes, args.batch_size)
        report['hiding'] = hiding_report(model, dataset, class_names, boxes, temperature, args.batch_size)
        written = [output / path.name for path in write_reports(report, probs, labels, class_names, staging)]
    if calibration:  # the checkpoint changes last, when everything else of the command has succeeded
        save_temperature(Path(name[len('local-dir:'):]), temperature)
    metrics, intervals = report['metrics'], report['intervals']
    print(f"{args.split}: {report['num_images']} images, accuracy {metrics['accuracy']:.3f} "
          f"[{intervals['accuracy'][0]:.3f}, {intervals['accuracy'][1]:.3f}], macro F1 {metrics['macro_f1']:.3f}, "
          f"ECE {metrics['ece']:.3f}" + (f', temperature {temperature:.3f} (saved)' if calibration else '')
          + (f"; absent classes: {', '.join(report['absent_classes'])}" if report['absent_classes'] else ''))
    if 'localization' in report:
        where = report['localization']
        print(f"where it looks ({where['method']}, {where['num_images']} images with boxes): "
              f"{where['mass_in_boxes']:.3f} of the map in the boxes (they cover {where['box_area_share']:.3f} of "
              f"the image), peak inside {where['pointing_hit_rate']:.3f}"
              + (f"; {where['invalid_boxes']} invalid box(es) left out" if where['invalid_boxes'] else ''))
    hiding = report['hiding']
    print(f"lungs hidden: {hiding['lungs']['answers_changed']:.1%} of the answers change (border hidden: "
          f"{hiding['border']['answers_changed']:.1%})" + (
              f"; {hiding['focus_class']} answers kept with the lungs hidden: {hiding['lungs']['focus_kept']:.1%} of "
              f"{hiding['focus_answers']}" if hiding['focus_answers'] else ''))
    print('wrote ' + ', '.join(str(p) for p in written))
    if unreadable:
        print(f'magsd evaluate: {len(unreadable)} unreadable image(s) left out (listed in evaluation.json)',
              file=sys.stderr)
    return 1 if unreadable else 0


@contextlib.contextmanager
def _report_folder(output: Path, inputs: List[str]) -> Iterator[Path]:
    """A staging folder for a report that replaces output whole when the block succeeds, under output's lock.

    output may be new, empty, or a report written before (evaluation.json): a folder of other files
    would be deleted by the replacement, so it is refused, as is an output inside an input.
    """
    check_no_overlap(output, [i for i in inputs if Path(i).exists()], 'report folder')
    with exclusive_lock(output, 'magsd evaluate'):
        for note in recover_folder(output):
            print(f'magsd evaluate: {note}', file=sys.stderr)
        if output.exists() and not (output.is_dir() and (not any(output.iterdir())
                                                         or (output / 'evaluation.json').is_file())):
            raise BadInputError(f'--output {display(output)} holds other files than an evaluation report: the report '
                                'replaces the folder it is written to; choose a new or empty folder.')
        with atomic_folder(output, 'evaluation report') as staging:
            yield staging


# ---- export -------------------------------------------------------------------------------------

def run_export(args: argparse.Namespace) -> int:
    from ..data.transforms import resolve_cxr_data_config
    from ..models.export import export_model

    model, name, config = _open(args)
    suffix = '.onnx' if args.format == 'onnx' else '.pt'
    output = Path(args.output or (Path(args.model).name.replace('/', '_').split('@')[0] + suffix))
    check = export_model(model, output, args.format, resolve_cxr_data_config(model)['input_size'])
    verdict = 'same logits' if check.ok else 'DIFFERENT logits'
    print(f'{args.format} ({check.method}): {verdict} as eager at batch {check.batch_size}: max |diff| '
          f'{check.max_abs_diff:.2e} (tolerance {check.tolerance:.2e}, max |logit| {check.max_abs_logit:.2f})')
    if not check.ok:
        print(f'magsd: the export does not reproduce the model; {output} was not written', file=sys.stderr)
        return EXIT_NOT_REPRODUCED
    print(f'wrote {output} (dynamic batch dimension)')
    if config.get('lung_crop'):
        print(f'note: {display(args.model)} was trained on films cut to their lungs by the lung detector beside it '
              f'({", ".join(DETECTOR_FILES)}); the export holds the classifier alone: cut the films with that detector '
              'before it (magsd predict does).')
    return 0


# ---- info ---------------------------------------------------------------------------------------

def run_info(args: argparse.Namespace) -> int:
    from ..data.transforms import resolve_cxr_data_config
    from ..models.complexity import count_macs, count_parameters

    model, name, config = _open(args, backbone_weights=False)  # a checkpoint's weights are loaded and checked
    data_config = resolve_cxr_data_config(model)
    info: Dict[str, Any] = {
        'model': args.model, 'resolved': name, 'architecture': model.pretrained_cfg.get('architecture'),
        'backbone': getattr(model, 'backbone_name', None), 'attention_maps': getattr(model, 'num_maps', None),
        'attention_levels': getattr(model, 'attn_levels', None), 'parameters': count_parameters(model),
        'gmacs': round(count_macs(model, data_config['input_size']) / 1e9, 3), 'num_classes': model.num_classes,
        'label_names': _label_names(model), 'temperature': temperature_of(config),
        'trained_on': training_record(config),
        'lung_crop': load_lung_crop(name, config).record() if config.get('lung_crop') else None,  # checked beside it
        'data_config': {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
    }
    if args.json:
        print(strict_json(info))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f'{key.ljust(width)}  {value}')
    return 0


# ---- zoo ----------------------------------------------------------------------------------------

def run_zoo(args: argparse.Namespace) -> int:
    from ..models.zoo import zoo_markdown

    print(zoo_markdown())
    return 0
