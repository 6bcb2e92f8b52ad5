"""A training run's output folder as the trainer writes it (the layout: magsd_timm.run_records).

Every file and checkpoint folder is written atomically; one process at a time may write a run folder
(``claim``). ``magsd_timm.run_records.find_run`` reads a run back for loading, model cards and Hub pushes.
"""
import contextlib
import copy
import csv
import io
import itertools
import json
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import yaml
from timm.models import safe_model_name, save_for_hf
from timm.utils import unfreeze

from ..errors import BadInputError, display
from ..run_records import ARGS, BEST, EVAL_BEST, FINAL, SKIPPED, SUMMARY
from ..utils.outputs import atomic_folder, atomic_path, exclusive_lock, recover_folder, strict_json, write_text_atomic
from .checkpoint import latest_checkpoint, remove_partial_checkpoints

if TYPE_CHECKING:
    from ..models.lung_detector import LungDetector

__all__ = ['RunFolder', 'new_run_path']

# what a run writes besides its models and checkpoints: stale once a run that wrote them is started afresh
_RECORDS = (ARGS, SKIPPED, SUMMARY, 'summary.csv', 'curves.png', EVAL_BEST, 'eval_best.md', 'confusion_matrix.png')
_REMOVING = '.checkpoints.removing'
_DATA_CONFIG_KEYS = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')


def new_run_path(root: Path, model: str, img_size: int) -> Path:
    """A new, empty run folder ROOT/DATE-TIME-MODEL-SIZE (timm's train.py names its runs so), -2, -3... if taken."""
    stem = '-'.join([time.strftime('%Y%m%d-%H%M%S'), safe_model_name(model), str(img_size)])
    Path(root).mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        path = Path(root) / (stem if n == 1 else f'{stem}-{n}')
        try:
            path.mkdir()  # made here, so that two runs started in the same second never share a folder
        except FileExistsError:
            continue
        return path


class RunFolder:
    """The output folder of one training run (see the module's docstring for its layout)."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        self.checkpoints = self.path / 'checkpoints'

    def claim(self, stack: contextlib.ExitStack, resume: bool) -> List[str]:
        """Hold the folder's lock for the stack's life, refuse a used folder unless resuming; clean-ups done, said.

        A folder in which a run stopped before its first checkpoint holds nothing to continue: its records
        are removed and the run starts afresh, so that a retry (with other settings too) is not blocked.
        """
        stack.enter_context(exclusive_lock(self.path, 'training run'))
        shutil.rmtree(self.path / _REMOVING, ignore_errors=True)  # a finished run's checkpoints, killed half-removed
        notes = [*recover_folder(self.path / BEST), *recover_folder(self.path / FINAL)]
        notes += [f'removed {display(p)}, left by an interrupted run' for p in remove_partial_checkpoints(self.checkpoints)]
        if (self.path / ARGS).is_file() and not self.has_results():
            for name in _RECORDS:
                (self.path / name).unlink(missing_ok=True)
            notes.append(f'{display(self.path)}: the run there stopped before its first checkpoint; starting afresh')
        elif self.path.exists() and any(self.path.iterdir()) and not resume:
            raise BadInputError(f'--output {display(self.path)} is not empty: pass --resume to continue it, or '
                                'choose another folder.')
        return notes

    def remove_checkpoints(self) -> None:
        """Remove a finished run's resumable checkpoints: renamed first, so that a kill half-way leaves none that looks
        whole."""
        if self.checkpoints.exists():
            self.checkpoints.rename(self.path / _REMOVING)
            shutil.rmtree(self.path / _REMOVING)

    def has_results(self) -> bool:
        """Whether a run left anything to continue or keep here: a checkpoint, best/ or final/."""
        return latest_checkpoint(self.checkpoints) is not None or (self.path / BEST).exists() \
            or (self.path / FINAL).exists()

    def write_args(self, args: Dict[str, Any], command: str) -> None:
        """Record the run's arguments and the command that started it."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path / ARGS, yaml.safe_dump(dict(args, command=command), sort_keys=False), 'run arguments')

    def write_skipped(self, dropped: Sequence[Dict[str, str]]) -> Path:
        """List the images the run left out."""
        return write_text_atomic(self.path / SKIPPED, strict_json(list(dropped)), 'list of skipped images')

    def read_summary(self, before_epoch: int) -> List[Dict[str, Any]]:
        """The per-epoch rows of the epochs before before_epoch (what a resumed run keeps)."""
        path = self.path / SUMMARY
        return [r for r in json.loads(path.read_text()) if r['epoch'] < before_epoch] if path.is_file() else []

    def write_summary(self, rows: List[Dict[str, Any]]) -> None:
        """The per-epoch rows as summary.json and summary.csv, plotted in curves.png."""
        from ..evaluation.plots import plot_curves  # matplotlib, only where a run writes its figures

        write_text_atomic(self.path / SUMMARY, strict_json(rows), 'run summary')
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=sorted({k for row in rows for k in row}, key=lambda k: (k != 'epoch', k)))
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.path / 'summary.csv', buffer.getvalue(), 'run summary')
        with atomic_path(self.path / 'curves.png', 'learning curves') as staged:
            plot_curves(rows, staged)

    def save_model(self, name: str, model: torch.nn.Module, class_names: Sequence[str], data_config: Dict[str, Any],
                   training: Dict[str, Any], card: Optional[Callable[[Path], str]] = None,
                   lung_crop: Optional['LungDetector'] = None) -> Path:
        """best/ or final/ in timm's Hub format, with the trained input size, the training record and a card; and
        the lung detector that cut its films, when one did."""
        from ..models.lung_detector import DETECTOR_FILES, DETECTOR_WEIGHTS
        from ..utils.digest import file_sha256

        folder = self.path / name
        extra = {'lung_crop': lung_crop.record()} if lung_crop is not None else {}
        # safetensors stores contiguous tensors only: a model trained channels_last is saved from a copy
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        # the classes in the classifier's order everywhere: the architecture's default names (another order, or
        # other classes of as many) would stay in pretrained_cfg, where code reading the file without timm looks
        model.pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k != 'label_descriptions'}
        model.pretrained_cfg['label_names'] = list(class_names)
        reduction = (getattr(model, 'feature_info', None) or [{}])[-1].get('reduction')
        if reduction:  # the unpooled map at the trained size, which timm cannot tell and saves as None
            size = tuple(data_config['input_size'])
            model.pretrained_cfg.update(input_size=size, pool_size=tuple(math.ceil(s / reduction) for s in size[1:]))
        unfreeze(model)  # frozen stages (--freeze-stages) are saved as the architecture's own BatchNorm layers
        with atomic_folder(folder, 'checkpoint') as staging:
            save_for_hf(model, staging, safe_serialization=True,
                        model_config={'label_names': list(class_names), 'training': training, **extra},
                        data_config={k: data_config[k] for k in _DATA_CONFIG_KEYS})
            if lung_crop is not None:
                for file in DETECTOR_FILES:
                    shutil.copyfile(lung_crop.source / file, staging / file)
                if file_sha256(staging / DETECTOR_WEIGHTS) != lung_crop.digest:
                    raise BadInputError(f'{display(lung_crop.source)}: the lung detector there changed during the run; '
                                        'its checkpoint would carry another detector than the one its films were cut '
                                        'with.')
            if card is not None:
                (staging / 'README.md').write_text(card(staging))
        return folder

    def write_best_report(self, metrics: Dict[str, Any], epoch: int, class_names: Sequence[str]) -> None:
        """The best checkpoint's validation report (eval_best.json, eval_best.md) and its confusion matrix."""
        from ..evaluation.metrics import metrics_markdown
        from ..evaluation.plots import plot_confusion_matrix

        write_text_atomic(self.path / EVAL_BEST, strict_json(dict(metrics, epoch=epoch)), 'evaluation report')
        write_text_atomic(self.path / 'eval_best.md', f'# Validation report, best epoch {epoch}\n\n'
                                                      f'{metrics_markdown(metrics, class_names)}', 'evaluation report')
        with atomic_path(self.path / 'confusion_matrix.png', 'confusion matrix') as staged:
            plot_confusion_matrix(metrics['confusion_matrix'], class_names, staged)
