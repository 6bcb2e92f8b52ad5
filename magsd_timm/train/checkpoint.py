"""Training checkpoints that are never half-written: accelerate's save_state, then a rename.

Each checkpoint is a folder ``step_<global step>`` under the run's ``checkpoints/``. Every process
writes its part to one staging folder beside it (``outputs.staging_folder``), which the main process
then moves into place (``outputs.replace_folder``), so a process killed at any moment leaves either
the previous checkpoints or a complete new one; only the newest ``keep`` are kept. A save that fails
(a full disk) removes its partial folder and says so, naming the last complete checkpoint, which
stays as it was; ``remove_partial_checkpoints`` clears what killed runs left. State registered with
``accelerator.register_for_checkpointing`` (the trainer's progress, EMA, schedule) travels with the
model, optimizer and RNG states.
"""
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from safetensors import SafetensorError

from ..errors import display
from ..utils.outputs import replace_folder, staging_folder, umask_modes_inside, write_failure

__all__ = ['TrainProgress', 'latest_checkpoint', 'remove_partial_checkpoints', 'save_checkpoint']

PREFIX = 'step_'


class TrainProgress:
    """Where a run is (checkpointed): epoch, batch within it, batches and optimizer updates so far, best metric,
    and where its starting weights came from (a resumed run keeps the source of the run it continues)."""

    def __init__(self, pretrained_source: Optional[str] = None):
        self.epoch, self.step_in_epoch, self.global_step, self.updates = 0, 0, 0, 0
        self.best_metric: Optional[float] = None
        self.pretrained_source = pretrained_source

    def state_dict(self) -> Dict[str, Any]:
        return dict(epoch=self.epoch, step_in_epoch=self.step_in_epoch, global_step=self.global_step,
                    updates=self.updates, best_metric=self.best_metric, pretrained_source=self.pretrained_source)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.epoch, self.step_in_epoch = state['epoch'], state['step_in_epoch']
        self.global_step, self.updates, self.best_metric = state['global_step'], state['updates'], state['best_metric']
        self.pretrained_source = state.get('pretrained_source')  # None: a checkpoint older than the record of it


def latest_checkpoint(root: Path) -> Optional[Path]:
    """The newest complete checkpoint under root, or None."""
    found = sorted(p for p in Path(root).glob(f'{PREFIX}*') if p.is_dir() and p.name[len(PREFIX):].isdigit())
    return max(found, key=lambda p: int(p.name[len(PREFIX):])) if found else None


def remove_partial_checkpoints(root: Path) -> List[Path]:
    """Remove the staging folders that runs killed while saving left under root; the removed ones."""
    partial = sorted(Path(root).glob(staging_folder(f'{PREFIX}*', '*').name))
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def save_checkpoint(accelerator, root: Path, global_step: int, keep: int = 2) -> Path:
    """Save the accelerator's state as root/step_<global_step>, atomically, keeping the newest `keep`."""
    root = Path(root)
    final = root / f'{PREFIX}{global_step:08d}'
    staging = staging_folder(final, 'save')  # one name that every process knows
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)  # left by a process killed while saving
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(staging))
    except (OSError, RuntimeError, SafetensorError) as e:  # torch and safetensors say a full disk in their own words
        shutil.rmtree(staging, ignore_errors=True)
        last = latest_checkpoint(root)
        kept = f'; the last complete checkpoint, {display(last)}, is intact' if last else ''
        raise write_failure(final, e, 'checkpoint', f' (the partial {display(staging)} was removed{kept})') from e
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        umask_modes_inside(staging)  # accelerate's writers make some files private
        replace_folder(staging, final)
        complete = sorted((p for p in root.glob(f'{PREFIX}*') if p.is_dir()), key=lambda p: p.name)
        for old in complete[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
