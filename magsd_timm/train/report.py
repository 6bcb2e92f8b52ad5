"""What a training run leaves for people to look at: learning curves and the confusion matrix."""
from pathlib import Path
from typing import Any, Dict, Sequence

import matplotlib
matplotlib.use('Agg')  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ['plot_confusion_matrix', 'plot_curves']


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
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha='center', va='center')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
