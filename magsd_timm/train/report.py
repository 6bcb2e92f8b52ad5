"""What a training run leaves for people: curves, the confusion matrix, the evaluation report, a model card."""
import importlib.resources
from pathlib import Path
from string import Template
from typing import Any, Dict, List, Sequence, Tuple

import matplotlib
matplotlib.use('Agg')  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from ..metrics import PER_CLASS  # noqa: E402

__all__ = ['metrics_markdown', 'plot_confusion_matrix', 'plot_curves', 'render_model_card']

SCALARS = ('accuracy', 'macro_f1')


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


def metrics_markdown(metrics: Dict[str, Any], class_names: Sequence[str]) -> Tuple[str, str]:
    """Markdown table rows of the overall metrics, and the per-class table (sensitivity ... AUROC)."""
    overall = '\n'.join(f'| {k} | {metrics[k]:.4f} |' for k in SCALARS) + f"\n| images | {metrics['num_samples']} |"
    header = '| class | ' + ' | '.join(PER_CLASS) + ' |\n|---|' + '---|' * len(PER_CLASS)
    rows = '\n'.join(f'| {c} | ' + ' | '.join(f'{metrics[m][c]:.4f}' for m in PER_CLASS) + ' |' for c in class_names)
    return overall, f'{header}\n{rows}'


def render_model_card(
        model, args: Dict[str, Any], metrics: Dict[str, Any], best_epoch: int, command: str, class_names: List[str],
) -> str:
    """A timm-style model card draft for the best checkpoint."""
    overall, per_class = metrics_markdown(metrics, class_names)
    backbone = getattr(model, 'backbone_name', None) or args.get('model')
    dataset = str(args.get('data') or 'kermany16')
    values = dict(
        base_model=f"timm/{backbone}", dataset=Path(dataset).name or dataset, name=Path(str(args['output'])).name,
        backbone=backbone, method='MAG-SD objective' if args.get('method') == 'magsd' else 'cross-entropy baseline',
        class_list=', '.join(class_names), architecture=model.pretrained_cfg.get('architecture', args.get('model')),
        params=f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f}',
        input_size='x'.join(map(str, (1, args['img_size'], args['img_size']))),
        num_maps=getattr(model, 'num_maps', 'no'), dataset_path=dataset, command=command,
        args_table='\n'.join(f'| {k} | {v} |' for k, v in args.items()),
        best_epoch=best_epoch, metrics_table=overall, per_class_table=per_class,
        metrics_yaml='\n'.join(f'    - type: {k}\n      value: {metrics[k]:.4f}' for k in SCALARS),
    )
    template = importlib.resources.files('magsd_timm.hub').joinpath('model_card.md').read_text()
    return Template(template).substitute(values)
