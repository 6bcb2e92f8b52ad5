"""A PyTorch dataset over any data source the recipes accept.

Sources: the bundled sample (``None`` or ``'sample'``), a folder written by ``prepare_data.py``, a
class-per-folder tree, a CSV/Parquet manifest, or a Hugging Face dataset (``'hf-hub:org/name'``, or
a folder saved with ``save_to_disk``). Sources without their own splits are split by patient,
stratified and seeded (``patient_split``).
"""
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .reader import image_to_array, read_image
from .sample import sample_records
from .sources import Record, folder_records, manifest_records
from .splits import SPLITS, assign_patients, patient_split

if TYPE_CHECKING:
    import datasets

__all__ = ['BalancedSampler', 'CXRDataset', 'open_dataset']

Transform = Callable[[np.ndarray], torch.Tensor]


class CXRDataset(Dataset):
    """(image tensor, class index) pairs from records (files) or a Hugging Face dataset split."""

    def __init__(self, items: Union[Sequence[Record], 'datasets.Dataset'], class_names: Sequence[str],
                 transform: Optional[Transform] = None, seed: Optional[int] = None):
        """seed: make each item's random transform a function of (seed, epoch, index) alone."""
        self.items, self.class_names, self.transform = items, list(class_names), transform
        self.from_files = isinstance(items, (list, tuple))
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random transforms the items get (with a seed)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def image(self, index: int) -> np.ndarray:
        """The decoded image: float32 (H, W) in [0, 1]."""
        if self.from_files:
            return read_image(self.items[index]['path'])
        return image_to_array(self.items[index]['image'])

    def label(self, index: int) -> int:
        """The class index of an item."""
        if self.from_files:
            return self.class_names.index(self.items[index]['label'])
        return int(self.items[index]['label'])

    def column(self, name: str) -> List[Optional[str]]:
        """A metadata field of every item ('patient_id', 'source'), None where the data has none."""
        if self.from_files:
            return [r.get(name) for r in self.items]
        if name not in self.items.column_names:
            return [None] * len(self.items)
        return list(self.items[name])

    def labels(self) -> List[int]:
        """The class index of every item, in order."""
        if self.from_files:
            return [self.class_names.index(r['label']) for r in self.items]
        return [int(label) for label in self.items['label']]

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image = self.image(index)
        if self.transform is None:
            return torch.from_numpy(image)[None], self.label(index)
        if self.seed is None:
            return self.transform(image), self.label(index)
        # independent of the global RNG, which loader look-ahead and resumption would otherwise shift
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index)
            return self.transform(image), self.label(index)


class BalancedSampler(Sampler):
    """As many draws as items, with replacement, every class equally likely; reseeded each epoch."""

    def __init__(self, labels: Sequence[int], seed: int = 0):
        counts = Counter(labels)
        self.weights = torch.tensor([1. / counts[label] for label in labels], dtype=torch.double)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draws to make."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.multinomial(self.weights, len(self.weights), True, generator=generator).tolist())


def _split_records(records: List[Record], split: str, seed: int) -> Tuple[List[Record], List[str]]:
    class_names = sorted({r['label'] for r in records})
    if any(r.get('split') for r in records):
        return [r for r in records if r.get('split') == split], class_names
    return patient_split(assign_patients(records), seed=seed)[split], class_names


def open_dataset(
        source: Optional[Union[str, Path]], split: str, transform: Optional[Transform] = None, seed: int = 0,
        augment_seed: Optional[int] = None,
) -> CXRDataset:
    """Open one split ('train', 'validation' or 'test') of a data source as a CXRDataset.

    seed picks the patient split of sources without one; augment_seed makes transforms reproducible per item.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}': choose one of {', '.join(SPLITS)}.")
    import datasets

    if source in (None, 'sample'):
        items, names = _split_records(sample_records(), split, seed)
        return CXRDataset(items, names, transform, augment_seed)
    if str(source).startswith('hf-hub:'):
        hub = datasets.load_dataset(str(source)[len('hf-hub:'):], split=split)
        return CXRDataset(hub, hub.features['label'].names, transform, augment_seed)
    path = Path(source)
    if (path / 'data' / 'dataset_dict.json').exists():  # written by prepare_data.py
        path = path / 'data'
    if (path / 'dataset_dict.json').exists():
        prepared = datasets.load_from_disk(str(path))
        if split not in prepared:
            raise ValueError(f"{source}: no '{split}' split (it has {', '.join(prepared)}).")
        return CXRDataset(prepared[split], prepared[split].features['label'].names, transform, augment_seed)
    if path.is_file():
        items, names = _split_records(manifest_records(path), split, seed)
    elif path.is_dir():
        items, names = _split_records(folder_records(path), split, seed)
    else:
        raise FileNotFoundError(f'{source}: no such data source (folder, manifest, prepared dataset or hf-hub:id).')
    return CXRDataset(items, names, transform, augment_seed)
