"""Evaluating a trained model on a data split: metrics with bootstrap intervals, calibration, reports.

One deterministic pass (no augmentation, fixed order) gives each image's logits. The metrics come with
percentile bootstrap intervals that resample patients when patient ids are known (images of one
patient are not independent), results per source when the data has several, and the expected
calibration error. Temperature scaling is fitted on another split (validation) by minimising the
negative log-likelihood, and saved into the checkpoint's config.json.
"""
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..data.dataset import CXRDataset
from ..errors import BadInputError
from ..models.config import TEMPERATURE_RANGE, check_temperature
from ..utils.outputs import atomic_path, strict_json, write_text_atomic
from ..utils.tables import markdown_table, shown_path
from .attention_maps import attention_maps_markdown
from .inference import model_logits, probabilities
from .metrics import SCALARS, bootstrap_intervals, classification_metrics, metric_cell, metrics_markdown
from .shortcuts import class_source_accuracy, hiding_markdown

__all__ = ['CalibrationError', 'LabelMismatchError', 'MIN_CALIBRATION_IMAGES', 'TEMPERATURE_RANGE', 'align_labels',
           'evaluate', 'fit_temperature', 'per_source_metrics', 'predict_dataset', 'report_markdown',
           'save_temperature', 'write_reports']

MIN_CALIBRATION_IMAGES = 20


class LabelMismatchError(BadInputError):
    """The checkpoint's classes are not the data's."""


class CalibrationError(BadInputError):
    """Temperature scaling cannot be fitted on these images."""


def align_labels(model_names: Sequence[str], data_names: Sequence[str]) -> torch.Tensor:
    """For each data class index, the model's index of the same class; the data may hold fewer classes, not others."""
    unknown = [name for name in data_names if name not in model_names]
    if unknown:
        raise LabelMismatchError(
            f'The checkpoint predicts {list(model_names)} but the data has {list(data_names)}: '
            f"{', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not among its classes; "
            'evaluate a checkpoint trained on these classes (data with fewer of its classes is fine).')
    return torch.tensor([list(model_names).index(name) for name in data_names])


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset: CXRDataset, batch_size: int = 16, tta: bool = False
                    ) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Logits of every image in order (one set, two with tta: raw and attention crop), and the labels."""
    model.eval()
    device = next(model.parameters()).device
    sets: List[List[torch.Tensor]] = []
    labels = []
    for images, targets in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        logits, _ = model_logits(model, images.to(device), tta)
        sets.append([x.float().cpu() for x in logits])
        labels.append(targets)
    return [torch.cat(parts) for parts in zip(*sets)], torch.cat(labels)


def fit_temperature(logits: Sequence[torch.Tensor], labels: torch.Tensor) -> float:
    """The temperature minimising the negative log-likelihood of the (mean) softmax, by golden-section search.

    Refused (CalibrationError) on fewer than MIN_CALIBRATION_IMAGES images, and when the minimum lies on
    the edge of TEMPERATURE_RANGE: the likelihood then has no minimum inside it, and the edge is no fit.
    """
    if len(labels) < MIN_CALIBRATION_IMAGES:
        raise CalibrationError(
            f'Temperature scaling needs at least {MIN_CALIBRATION_IMAGES} calibration images; the calibration split '
            f'has {len(labels)}. Calibrate on a larger split (--calibration-split) or leave the model uncalibrated.')

    def nll(log_t: float) -> float:
        probs = probabilities(logits, math.exp(log_t))
        return float(-probs.gather(1, labels[:, None]).clamp(min=1e-12).log().mean())

    bounds = low, high = math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    for _ in range(60):
        if nll(a) < nll(b):
            high, b = b, a
            a = high - ratio * (high - low)
        else:
            low, a = a, b
            b = low + ratio * (high - low)
    fitted = (low + high) / 2
    # a minimum that is no lower than an edge of the range (the edge itself, or a plateau reaching it) is no fit
    if nll(fitted) >= min(nll(edge) for edge in bounds) - 1e-6:
        raise CalibrationError(
            f'The temperature fitted on {len(labels)} images runs into the edge of the search range '
            f'{TEMPERATURE_RANGE} ({math.exp(fitted):.3g}): the likelihood has no minimum inside it, so this is no '
            'calibration. Calibrate on more (and more varied) images; the model was left uncalibrated.')
    return math.exp(fitted)


def save_temperature(checkpoint: Path, temperature: float) -> None:
    """Write a valid temperature into the checkpoint's config.json, atomically (a crash leaves the old file)."""
    path = Path(checkpoint) / 'config.json'
    config = json.loads(path.read_text())
    config['temperature'] = check_temperature(temperature, str(path))
    write_text_atomic(path, strict_json(config), 'checkpoint config')


def _present(labels: torch.Tensor, class_names: Sequence[str]) -> Optional[List[str]]:
    """The classes these labels hold, when they hold fewer than class_names (else None: all are present)."""
    held = sorted(set(labels.tolist()))
    return None if len(held) == len(class_names) else [class_names[k] for k in held]


def per_source_metrics(probs: torch.Tensor, labels: torch.Tensor, sources: Sequence[Optional[str]],
                       class_names: Sequence[str]) -> Dict[str, Tuple[int, List[str], Dict[str, Any]]]:
    """Per source: its image count, the classes it holds, and the metrics of its images (macro F1 over those)."""
    out = {}
    for source in sorted({s for s in sources if s is not None}):
        keep = torch.tensor([s == source for s in sources])
        held = _present(labels[keep], class_names)
        out[source] = (int(keep.sum()), held or list(class_names),
                       classification_metrics(probs[keep], labels[keep], class_names, probabilities=True, present=held))
    return out


def evaluate(
        logits: Sequence[torch.Tensor], labels: torch.Tensor, dataset: CXRDataset, class_names: Sequence[str],
        temperature: float = 1.0, replicates: int = 1000, seed: int = 0,
) -> Tuple[Dict[str, Any], torch.Tensor]:
    """The report (metrics, 95% intervals, per source) of logits in the model's class order, and the probabilities.

    Data may hold a subset of the model's classes (an external test set, a left-out source): the
    predictions stay over all classes, the absent classes are named, and macro F1 averages over the
    present ones (per source: over that source's).
    """
    probs = probabilities(logits, temperature)
    present = _present(labels, class_names)
    metrics = classification_metrics(probs, labels, class_names, probabilities=True, present=present)
    groups, unit = dataset.patient_groups()
    report: Dict[str, Any] = {
        'num_images': len(labels), 'num_patients': len(set(groups)) if unit == 'patient' else None,
        'temperature': temperature, 'metrics': metrics,
        'absent_classes': [c for c in class_names if present is not None and c not in present],
        'intervals': bootstrap_intervals(probs, labels, class_names, groups, replicates, seed, present=present),
        'bootstrap': {'replicates': replicates, 'seed': seed, 'level': 0.95, 'resampled': unit},
    }
    by_source = per_source_metrics(probs, labels, dataset.column('source'), class_names)
    if len(by_source) > 1:
        report['per_source'] = {source: {'num_images': count, **{k: result[k] for k in SCALARS}, 'classes': held}
                                for source, (count, held, result) in by_source.items()}
        report['class_source_accuracy'] = class_source_accuracy(probs.argmax(dim=1), labels, dataset.column('source'),
                                                                class_names)
    return report, probs


def report_markdown(report: Dict[str, Any], class_names: Sequence[str], title: bool = True) -> str:
    """An evaluation report (evaluate's) as Markdown: what was scored, the tables, where the model looks."""
    boot = report['bootstrap']
    model, data = shown_path(report.get('model', 'the model')), shown_path(report.get('data') or 'the data')
    lines = [f"# Evaluation of {model} on {data} ({report.get('split', '')})", ''] if title else []
    lines += [f"{report['num_images']} images" + (f", {report['num_patients']} patients" if report['num_patients'] else '')
             + f"; temperature {report['temperature']:.3f}; attention TTA {'on' if report.get('tta') else 'off'}. "
             f"Intervals: {boot['level']:.0%} percentile bootstrap, {boot['replicates']} resamples of "
             f"{boot['resampled']}s (seed {boot['seed']}). n/a: undefined on these images.", '']
    if report.get('unreadable'):
        lines += [f"{len(report['unreadable'])} image(s) of the split could not be read and were left out (listed "
                  'in evaluation.json): the metrics are of the images above.', '']
    if report.get('absent_classes'):
        lines += [f"Absent from these images: {', '.join(report['absent_classes'])}. The model still predicts "
                  'over all its classes (an image predicted as an absent class is an error); macro F1 averages '
                  'over the present classes; the per-class rows are one class against the rest.', '']
    lines.append(metrics_markdown(report['metrics'], class_names, report['intervals']))
    if 'per_source' in report:
        lines += ['Per source (macro F1 over the classes each source holds):', '', markdown_table(
            ['source', 'images', 'classes', *SCALARS],
            [[s, r['num_images'], ', '.join(r['classes']), *(metric_cell(r[k]) for k in SCALARS)]
             for s, r in report['per_source'].items()])]
    if 'class_source_accuracy' in report or 'hiding' in report:  # a section of its own, or of a model card's
        lines += ['', f"{'##' if title else '####'} Shortcuts: the disease or the film's origin?", '']
    if 'class_source_accuracy' in report:
        table = report['class_source_accuracy']
        sources = sorted({s for by in table.values() for s in by})
        lines += ['Per class, the share of each source\'s images of it predicted as it (images in brackets): a class '
                  'recognised in one source and missed in another is recognised by its source.', '', markdown_table(
                      ['class', *sources],
                      [[c, *(f"{by[s]['accuracy']:.3f} ({by[s]['num_images']})" if s in by else '-' for s in sources)]
                       for c, by in table.items()]), '']
    if 'hiding' in report:
        lines += [hiding_markdown(report['hiding']), '']
    if 'localization' in report:
        where = report['localization']
        empty = f", {where['empty_maps']} of them with a map that is zero everywhere, not scored" \
            if where.get('empty_maps') else ''
        empty += f"; {where['invalid_boxes']} invalid box(es) of the box file left out" \
            if where.get('invalid_boxes') else ''
        lines += ['', f"Where the model looks ({where['method']}), on the {where['num_images']} images with "
                      f"boxes{empty} ({where.get('images_without_boxes', 0)} without boxes left out) "
                      f"(the boxes cover {where['box_area_share']:.3f} of the image on average):", '', markdown_table(
                          ['measure', 'value [95% CI]'],
                          [['share of the heat map inside the boxes',
                            metric_cell(where['mass_in_boxes'], where['mass_in_boxes_interval'])],
                           ['pointing game: peak inside the boxes',
                            metric_cell(where['pointing_hit_rate'], where['pointing_hit_rate_interval'])]])]
    if 'attention_maps' in report:
        lines += ['', attention_maps_markdown(report['attention_maps'])]
    if 'calibration' in report:
        cal = report['calibration']
        lines += ['', f"Temperature {cal['temperature']:.3f} fitted on the {cal['split']} split "
                      f"({cal['num_images']} images): ECE there {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}."]
    return '\n'.join(lines) + '\n'


def write_reports(report: Dict[str, Any], probs: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                  output: Path) -> List[Path]:
    """evaluation.json, evaluation.md and the plots (confusion matrix, ROC, PR, reliability) in output."""
    from .plots import plot_confusion_matrix, plot_pr_curves, plot_reliability, plot_roc_curves

    texts = {'evaluation.json': strict_json(report), 'evaluation.md': report_markdown(report, class_names)}
    plots = {'confusion_matrix.png': lambda p: plot_confusion_matrix(report['metrics']['confusion_matrix'],
                                                                     class_names, p),
             'roc.png': lambda p: plot_roc_curves(probs, labels, class_names, p),
             'pr.png': lambda p: plot_pr_curves(probs, labels, class_names, p),
             'reliability.png': lambda p: plot_reliability(probs, labels, p)}
    for name, text in texts.items():
        write_text_atomic(output / name, text, 'evaluation report')
    for name, plot in plots.items():
        with atomic_path(output / name, 'evaluation plot') as staged:
            plot(staged)
    return [output / name for name in (*texts, *plots)]
