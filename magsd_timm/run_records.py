"""A training run's output folder as it is read back: its layout, its records, and the checkpoint it offers.

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

Loading a model from a run folder, a model card and a Hub push read a run through ``find_run``; the
trainer writes one through ``magsd_timm.train.run_folder.RunFolder``. Reading needs no training code.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from .errors import BadInputError, display
from .models.weights import SAFE_WEIGHTS
from .utils.strict_yaml import YamlSettingsError, load_settings

__all__ = ['ARGS', 'BEST', 'EVAL_BEST', 'FINAL', 'OPERATIONAL_ARGS', 'SKIPPED', 'SUMMARY', 'TrainingRun', 'find_run',
           'read_args', 'setting_differences']
BEST, FINAL = 'best', 'final'
ARGS, EVAL_BEST, SUMMARY, SKIPPED = 'args.yaml', 'eval_best.json', 'summary.json', 'skipped.json'
TEST_REPORT = 'test/evaluation.json'
# the arguments that change how a run is carried out, not what it computes: all others must match for a
# resume to continue a run, or for a benchmark to reuse one
OPERATIONAL_ARGS = ('output', 'resume', 'workers', 'cache_images', 'threads', 'checkpoint_every', 'keep_checkpoints',
                    'keep_finished_checkpoints', 'traceback', 'command')
_UNSET = object()


def setting_differences(recorded: Dict[str, Any], requested: Dict[str, Any]) -> List[str]:
    """Each setting (other than OPERATIONAL_ARGS) whose recorded value is not the requested one, said."""
    requested = yaml.safe_load(yaml.safe_dump(dict(requested)))  # compared as args.yaml stores them
    keys = sorted((set(recorded) | set(requested)) - set(OPERATIONAL_ARGS))

    def said(value: Any) -> str:
        return 'not recorded' if value is _UNSET else repr(value)
    return [f'{key}: {said(recorded.get(key, _UNSET))} then, {said(requested.get(key, _UNSET))} now'
            for key in keys if recorded.get(key, _UNSET) != requested.get(key, _UNSET)]


@dataclass
class TrainingRun:
    """A checkpoint and what its training run recorded about it."""
    checkpoint: Path
    args: Dict[str, Any] = field(default_factory=dict)
    metrics: Optional[Dict[str, Any]] = None
    epoch: Optional[int] = None
    command: Optional[str] = None
    test_report: Optional[Dict[str, Any]] = None  # magsd evaluate's report on the test split


def read_args(run_dir: Path) -> Dict[str, Any]:
    """The arguments a run recorded (with its command), or {} before the run started; BadInputError if unreadable."""
    path = Path(run_dir) / ARGS
    if not path.is_file():
        return {}
    try:
        return load_settings(path.read_text(encoding='utf-8'))
    except (YamlSettingsError, UnicodeDecodeError) as e:
        raise BadInputError(f'{display(path)}: not a readable record of a run\'s arguments ({e}).') from e


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
    run.args = read_args(run_dir)
    run.command = run.args.pop('command', None)
    if (run_dir / EVAL_BEST).is_file() and checkpoint.name == BEST:
        metrics = json.loads((run_dir / EVAL_BEST).read_text())
        run.epoch = metrics.pop('epoch', None)
        run.metrics = metrics
    if (run_dir / TEST_REPORT).is_file() and checkpoint.name == BEST:
        run.test_report = json.loads((run_dir / TEST_REPORT).read_text())
    return run
