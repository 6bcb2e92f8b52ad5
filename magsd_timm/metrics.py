"""Classification metrics of one pass over a split, as clinical readers ask for them (torchmetrics).

Accuracy, macro F1, and per class (one class against the rest): sensitivity (recall), specificity,
PPV (precision), NPV and AUROC, plus the confusion matrix (rows: true class, columns: predicted).
A per-class value that is undefined on the data (no positives for sensitivity or AUROC, no predicted
positives for PPV, ...) is NaN, not 0.
"""
from typing import Any, Dict, Sequence, Tuple

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy, multiclass_auroc, multiclass_confusion_matrix, multiclass_f1_score,
)

__all__ = ['PER_CLASS', 'SCALARS', 'classification_metrics', 'metrics_markdown']

SCALARS = ('accuracy', 'macro_f1')
PER_CLASS = ('sensitivity', 'specificity', 'ppv', 'npv', 'auroc')


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.full_like(numerator, float('nan')))


def classification_metrics(
        logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
) -> Dict[str, object]:
    """Metrics of logits (N, K) against labels (N,): floats, per-class dicts and the confusion matrix."""
    num_classes = len(class_names)
    if logits.ndim != 2 or logits.shape[1] != num_classes or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f'logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not fit {num_classes} classes.')
    probs = logits.detach().float().softmax(dim=-1).cpu()
    labels = labels.detach().long().cpu()
    cm = multiclass_confusion_matrix(probs, labels, num_classes).double()
    tp = cm.diagonal()
    fn, fp = cm.sum(dim=1) - tp, cm.sum(dim=0) - tp
    tn = cm.sum() - tp - fn - fp
    positives = cm.sum(dim=1)
    auroc = multiclass_auroc(probs, labels, num_classes, average=None, thresholds=None).double()
    auroc = torch.where(positives > 0, auroc, torch.full_like(auroc, float('nan')))
    per_class = {
        'sensitivity': _ratio(tp, tp + fn), 'specificity': _ratio(tn, tn + fp),
        'ppv': _ratio(tp, tp + fp), 'npv': _ratio(tn, tn + fn), 'auroc': auroc,
    }
    result: Dict[str, object] = {
        'accuracy': float(multiclass_accuracy(probs, labels, num_classes, average='micro')),
        'macro_f1': float(multiclass_f1_score(probs, labels, num_classes, average='macro')),
        'num_samples': int(labels.numel()),
        'confusion_matrix': cm.long().tolist(),
    }
    for name in PER_CLASS:
        result[name] = {c: float(v) for c, v in zip(class_names, per_class[name])}
    return result


def metrics_markdown(metrics: Dict[str, Any], class_names: Sequence[str]) -> Tuple[str, str]:
    """Markdown table rows of the overall metrics, and the per-class table (sensitivity ... AUROC)."""
    overall = '\n'.join(f'| {k} | {metrics[k]:.4f} |' for k in SCALARS) + f"\n| images | {metrics['num_samples']} |"
    header = '| class | ' + ' | '.join(PER_CLASS) + ' |\n|---|' + '---|' * len(PER_CLASS)
    rows = '\n'.join(f'| {c} | ' + ' | '.join(f'{metrics[m][c]:.4f}' for m in PER_CLASS) + ' |' for c in class_names)
    return overall, f'{header}\n{rows}'
