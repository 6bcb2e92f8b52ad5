"""A training run's output folder: what it holds, written by the trainer and read back, in one place.

    OUTPUT/
      args.yaml              the run's arguments and the command that started it
      checkpoints/step_*     accelerate states to resume from (train.checkpoint)
      best/, final/          timm Hub format: model.safetensors and config.json (label names, the trained
                             input size, a training record); best/README.md is a model card draft; with
                             --crop-lungs, the lung detector's two files and config.json's lung_crop
      eval_best.json, .md    the best checkpoint's validation report
      confusion_matrix.png   of that report
      summary.json, .csv     one row per epoch; curves.png plots them
      skipped.json           images left out (duplicates, label conflicts, unreadable files)
      test/                  the best checkpoint's test report, when `magsd evaluate RUN/best DATA
                             --output RUN/test` wrote one (evaluation.json, .md, plots): the card shows it

Every file and checkpoint folder is written atomically; one process at a time may write a run folder
(``claim``). ``find_run`` reads a run back for model cards and Hub pushes.
"""
import contextlib
import copy
import csv
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import yaml
from timm.models import save_for_hf
from timm.utils import unfreeze

from ..errors import BadInputError, display
from ..models.weights import SAFE_WEIGHTS
from ..outputs import atomic_folder, atomic_path, exclusive_lock, recover_folder, strict_json, write_text_atomic
from ..strict_yaml import YamlSettingsError, load_settings
from .checkpoint import latest_checkpoint, remove_partial_checkpoints

if TYPE_CHECKING:
    from ..models.lung_detector import LungDetector

__all__ = ['BEST', 'FINAL', 'OPERATIONAL_ARGS', 'RunFolder', 'TrainingRun', 'find_run', 'setting_differences']

BEST, FINAL = 'best', 'final'
ARGS, EVAL_BEST, SUMMARY, SKIPPED = 'args.yaml', 'eval_best.json', 'summary.json', 'skipped.json'
# what a run writes besides its models and checkpoints: stale once a run that wrote them is started afresh
_RECORDS = (ARGS, SKIPPED, SUMMARY, 'summary.csv', 'curves.png', EVAL_BEST, 'eval_best.md', 'confusion_matrix.png')
# the arguments that change how a run is carried out, not what it computes: all others must match for a
# resume to continue a run, or for a benchmark to reuse one
OPERATIONAL_ARGS = ('output', 'resume', 'workers', 'cache_images', 'threads', 'checkpoint_every', 'keep_checkpoints',
                    'traceback', 'command')
_UNSET = object()


def setting_differences(recorded: Dict[str, Any], requested: Dict[str, Any]) -> List[str]:
    """Each setting (other than OPERATIONAL_ARGS) whose recorded value is not the requested one, said."""
    requested = yaml.safe_load(yaml.safe_dump(dict(requested)))  # compared as args.yaml stores them
    keys = sorted((set(recorded) | set(requested)) - set(OPERATIONAL_ARGS))

    def said(value: Any) -> str:
        return 'not recorded' if value is _UNSET else repr(value)
    return [f'{key}: {said(recorded.get(key, _UNSET))} then, {said(requested.get(key, _UNSET))} now'
            for key in keys if recorded.get(key, _UNSET) != requested.get(key, _UNSET)]
TEST_REPORT = 'test/evaluation.json'
_DATA_CONFIG_KEYS = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')


@dataclass
class TrainingRun:
    """A checkpoint and what its training run recorded about it."""
    checkpoint: Path
    args: Dict[str, Any] = field(default_factory=dict)
    metrics: Optional[Dict[str, Any]] = None
    epoch: Optional[int] = None
    command: Optional[str] = None
    test_report: Optional[Dict[str, Any]] = None  # magsd evaluate's report on the test split


def find_run(path: Union[str, Path]) -> TrainingRun:
    """The checkpoint of a run folder (its best/) or a checkpoint folder, with the run's records."""
    path = Path(path)
    if (path / BEST / 'config.json').is_file():
        checkpoint, run_dir = path / BEST, path
    elif (path / 'config.json').is_file():
        checkpoint, run_dir = path, path.parent
    else:
        raise FileNotFoundError(
            f"No checkpoint in '{path}': expected a training output folder (with best/config.json, as "
            f"recipes/train.py leaves it) or a folder with config.json and {SAFE_WEIGHTS}.")
    run = TrainingRun(checkpoint)
    folder = RunFolder(run_dir)
    run.args = folder.read_args()
    run.command = run.args.pop('command', None)
    if (run_dir / EVAL_BEST).is_file() and checkpoint.name == BEST:
        metrics = json.loads((run_dir / EVAL_BEST).read_text())
        run.epoch = metrics.pop('epoch', None)
        run.metrics = metrics
    if (run_dir / TEST_REPORT).is_file() and checkpoint.name == BEST:
        run.test_report = json.loads((run_dir / TEST_REPORT).read_text())
    return run


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

    def has_results(self) -> bool:
        """Whether a run left anything to continue or keep here: a checkpoint, best/ or final/."""
        return latest_checkpoint(self.checkpoints) is not None or (self.path / BEST).exists() \
            or (self.path / FINAL).exists()

    def read_args(self) -> Dict[str, Any]:
        """The arguments the run recorded (with its command), or {} before the run started; BadInputError if unreadable."""
        path = self.path / ARGS
        if not path.is_file():
            return {}
        try:
            return load_settings(path.read_text(encoding='utf-8'))
        except (YamlSettingsError, UnicodeDecodeError) as e:
            raise BadInputError(f'{display(path)}: not a readable record of a run\'s arguments ({e}).') from e

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
        from ..plots import plot_curves  # matplotlib, only where a run writes its figures

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
        from ..digest import file_sha256
        from ..models.lung_detector import DETECTOR_FILES, DETECTOR_WEIGHTS

        folder = self.path / name
        extra = {'lung_crop': lung_crop.record()} if lung_crop is not None else {}
        # safetensors stores contiguous tensors only: a model trained channels_last is saved from a copy
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        # the classes in the classifier's order everywhere: the architecture's default names (another order, or
        # other classes of as many) would stay in pretrained_cfg, where code reading the file without timm looks
        model.pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k != 'label_descriptions'}
        model.pretrained_cfg['label_names'] = list(class_names)
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
        from ..metrics import metrics_markdown
        from ..plots import plot_confusion_matrix

        write_text_atomic(self.path / EVAL_BEST, strict_json(dict(metrics, epoch=epoch)), 'evaluation report')
        write_text_atomic(self.path / 'eval_best.md', f'# Validation report, best epoch {epoch}\n\n'
                                                      f'{metrics_markdown(metrics, class_names)}', 'evaluation report')
        with atomic_path(self.path / 'confusion_matrix.png', 'confusion matrix') as staged:
            plot_confusion_matrix(metrics['confusion_matrix'], class_names, staged)
