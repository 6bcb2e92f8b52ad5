"""Figures of training and evaluation runs: learning curves, confusion matrix, ROC and PR curves, reliability."""
from pathlib import Path
from typing import Any, Dict, Sequence

import matplotlib
import torch

matplotlib.use('Agg')  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ['plot_confusion_matrix', 'plot_curves', 'plot_pr_curves', 'plot_reliability', 'plot_roc_curves']


def plot_curves(rows: Sequence[Dict[str, Any]], path: Path) -> None:
    """Training loss and validation metrics per epoch, as a PNG."""
    epochs = [r['epoch'] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key in sorted(k for k in rows[0] if k.startswith('train_') and ('loss' in k or 'ce_raw' in k)):
        left.plot(epochs, [r[key] for r in rows], marker='o', label=key[len('train_'):])
    left.set(title='training loss', xlabel='epoch')
    left.legend()
    for key in sorted(k for k in rows[0] if k.startswith('val_')):
        right.plot(epochs, [r[key] for r in rows], marker='o', label=key[len('val_'):])
    right.set(title='validation', xlabel='epoch', ylim=(0, 1.02))
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path) -> None:
    """The confusion matrix (rows: true class, columns: predicted), counts written in the cells."""
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2.5, 1.2 * len(class_names) + 2))
    ax.imshow(matrix, cmap='Blues')
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=30, ha='right')
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel='predicted', ylabel='true', title='confusion matrix')
    darkest = max((count for row in matrix for count in row), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):  # white on the dark half of the colour scale, black on the light half
            ax.text(j, i, str(count), ha='center', va='center', color='white' if count > darkest / 2 else 'black')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _one_vs_rest_curves(probs: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], path: Path,
                        kind: str) -> None:
    from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for k, name in enumerate(class_names):
        target = (labels == k).long()
        if target.sum() == 0 or target.sum() == len(target):
            continue  # one class only: the curve is undefined
        if kind == 'roc':
            x, y, _ = binary_roc(probs[:, k], target)
        else:
            y, x, _ = binary_precision_recall_curve(probs[:, k], target)
        ax.plot(x.numpy(), y.numpy(), label=name, drawstyle='steps-post' if kind == 'pr' else 'default')
    if kind == 'roc':
        ax.plot([0, 1], [0, 1], linestyle=':', color='grey')
        ax.set(xlabel='1 - specificity', ylabel='sensitivity', title='ROC, one class against the rest')
    else:
        ax.set(xlabel='recall (sensitivity)', ylabel='precision (PPV)', title='precision-recall, one against the rest')
    ax.set(xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc='lower right' if kind == 'roc' else 'lower left')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roc_curves(probs: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], path: Path) -> None:
    """ROC curve of each class against the rest (classes without positives or negatives are left out)."""
    _one_vs_rest_curves(probs, labels, class_names, path, 'roc')


def plot_pr_curves(probs: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], path: Path) -> None:
    """Precision-recall curve of each class against the rest."""
    _one_vs_rest_curves(probs, labels, class_names, path, 'pr')


def plot_reliability(probs: torch.Tensor, labels: torch.Tensor, path: Path, bins: int = 15) -> None:
    """Reliability diagram: accuracy against confidence (top-class probability) in equal-width bins."""
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1)
    which = torch.bucketize(confidence, edges[1:-1])
    centers, accuracy, counts = [], [], []
    for b in range(bins):
        inside = which == b
        if inside.any():
            centers.append(float(confidence[inside].mean()))
            accuracy.append(float(correct[inside].mean()))
            counts.append(int(inside.sum()))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], linestyle=':', color='grey', label='perfect calibration')
    ax.bar(centers, accuracy, width=1 / bins, alpha=0.6, edgecolor='black', label='accuracy in bin')
    for x, y, n in zip(centers, accuracy, counts):
        ax.text(x, y + 0.02, str(n), ha='center', fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1.08), xlabel='confidence', ylabel='accuracy', title='reliability (images per bin)')
    ax.legend(loc='upper left')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
