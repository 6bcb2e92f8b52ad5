"""Classification metrics of one pass over a split, as clinical readers ask for them (torchmetrics).

Accuracy, macro F1, expected calibration error (15 equal-width confidence bins), and per class (one
class against the rest): sensitivity (recall), specificity, PPV (precision), NPV, AUROC and AUPRC
(average precision), plus the confusion matrix (rows: true class, columns: predicted). A per-class
value that is undefined on the data (no positives for sensitivity, AUROC or AUPRC, no negatives for
AUROC, no predicted positives for PPV, ...) is NaN, not 0. ``bootstrap_intervals`` gives percentile
confidence intervals of all of them, resampling patients (clusters of images) when their ids are known.
``group_resamples`` is the one bootstrap of the package (localization intervals use it too).
``metrics_markdown`` renders the metrics as the tables reports and model cards show. torchmetrics is
imported when metrics are computed, so that rendering a card does not load it.
"""
import math
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch

from ..utils.tables import markdown_table

__all__ = ['PER_CLASS', 'SCALARS', 'bootstrap_intervals', 'classification_metrics', 'defined_mean', 'group_resamples',
           'metric_cell', 'metrics_markdown', 'percentile_interval']

SCALARS = ('accuracy', 'macro_f1', 'ece')
PER_CLASS = ('sensitivity', 'specificity', 'ppv', 'npv', 'auroc', 'auprc')
ECE_BINS = 15


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.full_like(numerator, float('nan')))


def classification_metrics(
        logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], probabilities: bool = False,
        present: Optional[Sequence[str]] = None,
) -> Dict[str, object]:
    """Metrics of logits (or probabilities) (N, K) against labels (N,): floats, per-class dicts, confusion matrix.

    Macro F1 averages over the classes present: by default those the labels hold (a validation split or
    an external test set may lack some), or the given ``present`` (a bootstrap resample keeps the full
    data's). This is the one definition the trainer, evaluate, cards and benchmarks use. Predictions
    stay over all classes.
    """
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_auroc,
        multiclass_average_precision,
        multiclass_calibration_error,
        multiclass_confusion_matrix,
        multiclass_f1_score,
    )

    num_classes = len(class_names)
    if logits.ndim != 2 or logits.shape[1] != num_classes or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f'logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not fit {num_classes} classes.')
    probs = logits.detach().float().cpu()
    if not bool(torch.isfinite(probs).all()):  # torchmetrics would score NaN as a class, and AUROC as 0 or 1
        raise ValueError(f"{'probabilities' if probabilities else 'logits'} hold NaN or infinite values: "
                         'nothing can be scored from them.')
    probs = probs if probabilities else probs.softmax(dim=-1)
    labels = labels.detach().long().cpu()
    cm = multiclass_confusion_matrix(probs, labels, num_classes).double()
    tp = cm.diagonal()
    fn, fp = cm.sum(dim=1) - tp, cm.sum(dim=0) - tp
    tn = cm.sum() - tp - fn - fp
    positives = cm.sum(dim=1)
    held = positives > 0 if present is None else torch.tensor([c in present for c in class_names])
    with warnings.catch_warnings():  # torchmetrics warns of classes without positives: they become NaN below
        warnings.filterwarnings('ignore', category=UserWarning, module='torchmetrics')
        auroc = multiclass_auroc(probs, labels, num_classes, average=None, thresholds=None).double()
        auprc = multiclass_average_precision(probs, labels, num_classes, average=None, thresholds=None).double()
    both = (positives > 0) & (positives < labels.numel())  # AUROC needs positives and negatives
    auroc = torch.where(both, auroc, torch.full_like(auroc, float('nan')))
    auprc = torch.where(positives > 0, auprc, torch.full_like(auprc, float('nan')))
    per_class = {
        'sensitivity': _ratio(tp, tp + fn), 'specificity': _ratio(tn, tn + fp),
        'ppv': _ratio(tp, tp + fp), 'npv': _ratio(tn, tn + fn), 'auroc': auroc, 'auprc': auprc,
    }
    result: Dict[str, object] = {
        'accuracy': float(multiclass_accuracy(probs, labels, num_classes, average='micro')),
        'macro_f1': float(multiclass_f1_score(probs, labels, num_classes, average=None)[held].mean()),
        'ece': float(multiclass_calibration_error(probs, labels, num_classes, n_bins=ECE_BINS, norm='l1')),
        'num_samples': int(labels.numel()),
        'confusion_matrix': cm.long().tolist(),
    }
    for name in PER_CLASS:
        result[name] = {c: float(v) for c, v in zip(class_names, per_class[name])}
    return result


def metric_cell(value: Optional[float], interval: Optional[Sequence[Optional[float]]] = None) -> str:
    """A metric to 3 decimals with its interval; undefined (NaN, or null as JSON stores it) reads 'n/a'."""
    def defined(v: Optional[float]) -> bool:
        return v is not None and not math.isnan(v)

    text = f'{value:.3f}' if defined(value) else 'n/a'
    if interval is not None and all(defined(v) for v in interval):
        text += f' [{interval[0]:.3f}, {interval[1]:.3f}]'
    return text


def metrics_markdown(metrics: Dict[str, Any], class_names: Sequence[str],
                     intervals: Optional[Dict[str, Any]] = None) -> str:
    """The overall, per-class (one against the rest) and confusion-matrix tables of classification_metrics."""
    def cell(name: str, cls: Optional[str] = None) -> str:
        bounds = (intervals or {}).get(name)
        value = metrics[name]
        if cls is not None:
            value, bounds = value[cls], bounds[cls] if bounds else None
        return metric_cell(value, bounds)

    value_header = 'value [95% CI]' if intervals else 'value'
    overall = markdown_table(['metric', value_header],
                             [[k, cell(k)] for k in SCALARS] + [['images', metrics['num_samples']]])
    per_class = markdown_table(['class', *PER_CLASS], [[c, *(cell(m, c) for m in PER_CLASS)] for c in class_names])
    confusion = markdown_table(['true \\ predicted', *class_names],
                               [[c, *row] for c, row in zip(class_names, metrics['confusion_matrix'])])
    return (f'{overall}\n\nPer class (one against the rest):\n\n{per_class}\n\n'
            f'Confusion matrix (rows: true class, columns: predicted):\n\n{confusion}\n')


def bootstrap_intervals(
        probs: Union[torch.Tensor, Sequence[torch.Tensor]], labels: torch.Tensor, class_names: Sequence[str],
        groups: Optional[Sequence[Any]] = None, replicates: int = 1000, seed: int = 0, level: float = 0.95,
        present: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """Percentile intervals [low, high] of every metric over resamples, with replacement, of groups (default: images).

    probs may be several runs' probabilities on the same images (seeds of one recipe): each resample
    then scores the mean of the runs' metrics on it, so the interval is the seed mean's.
    """
    runs = [probs] if isinstance(probs, torch.Tensor) else list(probs)
    if present is None:  # a resample that misses a class still averages over the data's classes
        present = [class_names[k] for k in sorted(set(labels.tolist()))]
    if groups is not None and len(groups) != len(labels):
        raise ValueError(f'{len(groups)} group ids for {len(labels)} images.')
    draws: Dict[str, List[float]] = {}
    for picked in group_resamples(len(labels) if groups is None else groups, replicates, seed):
        results = [classification_metrics(run[picked], labels[picked], class_names, probabilities=True,
                                          present=present) for run in runs]
        for name in SCALARS:
            draws.setdefault(name, []).append(defined_mean([r[name] for r in results]))
        for name in PER_CLASS:
            for c in class_names:
                draws.setdefault(f'{name}/{c}', []).append(defined_mean([r[name][c] for r in results]))
    bounds = {k: percentile_interval(torch.tensor(v), level) for k, v in draws.items()}
    out: Dict[str, Any] = {name: bounds[name] for name in SCALARS}
    for name in PER_CLASS:
        out[name] = {c: bounds[f'{name}/{c}'] for c in class_names}
    return out


def group_resamples(groups: Union[int, Sequence[Any]], replicates: int, seed: int) -> Iterator[torch.Tensor]:
    """Indices of each bootstrap resample: groups (patients; an int n means n images, each its own) drawn with
    replacement, all images of a drawn group taken; seeded, so every interval of one seed draws alike."""
    groups = list(range(groups)) if isinstance(groups, int) else list(groups)
    index: Dict[Any, List[int]] = {}
    for i, group in enumerate(groups):
        index.setdefault(group, []).append(i)
    members = [torch.tensor(v) for v in index.values()]
    generator = torch.Generator().manual_seed(seed)
    for _ in range(replicates):
        yield torch.cat([members[i] for i in torch.randint(len(members), (len(members),), generator=generator)])


def percentile_interval(draws: torch.Tensor, level: float = 0.95) -> List[float]:
    """The percentile interval [low, high] of bootstrap draws (undefined draws left out)."""
    tail = (1 - level) / 2
    return torch.nanquantile(draws.double(), torch.tensor([tail, 1 - tail], dtype=torch.double)).tolist()


def defined_mean(values: Sequence[float]) -> float:
    """The mean of the defined values (NaN when none is)."""
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else float('nan')
