"""A PyTorch dataset over any data source the recipes accept.

Sources: the bundled sample (``None`` or ``'sample'``), a folder written by ``prepare_data.py``, a
class-per-folder tree, a CSV/Parquet manifest, or a Hugging Face dataset (``'hf-hub:org/name'``, or
a folder saved with ``save_to_disk``). Sources without their own splits are split by patient,
stratified and seeded (``patient_split``). Sources of files (their label spellings folded as they are
read) have exact duplicates removed first; copies with conflicting labels are left out (``dataset.dropped``).
``dataset.check_images()`` decodes every image once, so a trainer can refuse or skip bad ones before
its first step; ``readable(keep=True)`` keeps what that pass computed (the transform's deterministic
``Preprocess``), so later epochs neither decode nor resize a film again and give the same tensors.
"""
import functools
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Hashable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import BadInputError, display
from ..utils.digest import bytes_sha256, file_sha256, json_sha256
from ..utils.hub_files import HUB_PREFIX, hub_snapshot, parse_hub_ref
from ..utils.seeds import mix_seed, seeded_generator
from .reader import ImageReadError, read_image, read_image_bytes
from .sample import sample_dir, sample_records
from .sources import Record, folder_records, manifest_records
from .splits import SPLITS, assign_patients, deduplicate, patient_split
from .transforms import Preprocess

if TYPE_CHECKING:
    import datasets

__all__ = ['BalancedSampler', 'CXRDataset', 'ImageChangedError', 'open_dataset']

Transform = Callable[[np.ndarray], torch.Tensor]


class ImageChangedError(OSError):
    """An image that read well when the dataset was checked no longer does (deleted, replaced, a failing disk): the
    machine failed, not the input (exit 1)."""


class CXRDataset(Dataset):
    """(image tensor, class index) pairs from records (files) or a Hugging Face dataset split."""

    def __init__(self, items: Union[Sequence[Record], 'datasets.Dataset'], class_names: Sequence[str],
                 transform: Optional[Transform] = None, seed: Optional[int] = None):
        """seed: make each item's random transform a function of (seed, epoch, index) alone."""
        self.from_files = isinstance(items, (list, tuple))
        if not self.from_files:  # decoded by read_image_bytes, which bounds the pixels before decoding
            items = _undecoded_images(items)
        self.items, self.class_names, self.transform = items, list(class_names), transform
        self.seed, self.epoch = seed, 0
        self.dropped: List[Tuple[str, str]] = []  # (file, why) left out when the source was opened
        self.kept: Optional[List[Optional[torch.Tensor]]] = None  # each item's packed Preprocess output
        self._windows: Dict[int, Optional[Tuple[float, float, float, float]]] = {}  # window(), once per item
        self.failed_check: Optional[set] = None  # after check_images: the items that failed it (others read well)

    @functools.cached_property  # once per dataset, not per item: the transform does not change
    def _split_transform(self) -> Tuple[Optional[Preprocess], Optional[Transform]]:
        """The transform's leading deterministic Preprocess step (or None) and the steps after it."""
        steps = getattr(self.transform, 'transforms', None)
        if steps and isinstance(steps[0], Preprocess):
            return steps[0], type(self.transform)(steps[1:]) if len(steps) > 1 else None
        return None, self.transform

    def check_images(self, keep: bool = False) -> List[Tuple[int, str]]:
        """Decode every image once: the index and the reason of each that cannot be read (or is too small).

        keep: hold each image's preprocessed form (8 bits a pixel after CLAHE) for the epochs to come.
        """
        preprocess = self._split_transform[0] if keep else None
        kept: List[Optional[torch.Tensor]] = []
        problems = []
        for index in range(len(self)):
            try:
                image = self.image(index)
            except ImageReadError as e:
                problems.append((index, str(e)))
                kept.append(None)
                continue
            kept.append(preprocess.pack(preprocess(image)) if preprocess is not None else None)
        if preprocess is not None:
            self.kept = kept
        self.failed_check = {index for index, _ in problems}
        return problems

    def readable(self, keep: bool = False) -> Tuple['CXRDataset', List[Tuple[str, str]]]:
        """The dataset without the images that cannot be read (they join ``dropped``), and those (name, why).

        keep: the images' deterministic preprocessing is done now, once, and kept (see check_images).
        """
        problems = self.check_images(keep)
        if not problems:
            return self, []
        subset = self.without(problems)
        return subset, subset.dropped[len(self.dropped):]

    def name(self, index: int) -> str:
        """A printable name of an item: its file, or its file name and index in a Hugging Face dataset."""
        if self.from_files:
            return display(self.items[index]['path'])
        names = self.items.column_names
        return f"{self.items[index]['file_name'] if 'file_name' in names else 'image'} (row {index})"

    def without(self, problems: Sequence[Tuple[int, str]]) -> 'CXRDataset':
        """The same dataset without the items check_images found (index, why); they join `dropped`."""
        drop = {index for index, _ in problems}
        subset = self._subset([i for i in range(len(self)) if i not in drop])
        subset.dropped += [(self.name(i), why) for i, why in problems]
        return subset

    def without_sources(self, sources: Sequence[str]) -> 'CXRDataset':
        """The same dataset without the items of these sources ('SOURCE', or 'SOURCE:CLASS' for one class of it): a
        source, or one source's films of a class, held out of training."""
        return self._subset([i for i, held in enumerate(self.held_by(sources)) if not held])

    def of_sources(self, sources: Sequence[str]) -> 'CXRDataset':
        """The items of these sources ('SOURCE' or 'SOURCE:CLASS') alone."""
        return self._subset([i for i, held in enumerate(self.held_by(sources)) if held])

    def held_by(self, sources: Sequence[str]) -> List[bool]:
        """For each item, whether one of these 'SOURCE' or 'SOURCE:CLASS' names takes it."""
        whole = {s for s in sources if ':' not in s}
        pairs = {tuple(s.split(':', 1)) for s in sources if ':' in s}
        return [source in whole or (source, self.class_names[k]) in pairs
                for source, k in zip(self.column('source'), self.labels())]

    @staticmethod
    def joined(parts: Sequence['CXRDataset']) -> 'CXRDataset':
        """The items of several datasets of the same kind and classes, in order, with the first one's transform."""
        import datasets

        first = parts[0]
        if any(p.from_files != first.from_files or p.class_names != first.class_names for p in parts):
            raise ValueError('only datasets of the same kind and classes can be joined')
        items = ([item for p in parts for item in p.items] if first.from_files
                 else datasets.concatenate_datasets([p.items for p in parts]))
        joined = CXRDataset(items, first.class_names, first.transform, first.seed)
        joined.dropped = [d for p in parts for d in p.dropped]
        return joined

    def _subset(self, keep: List[int]) -> 'CXRDataset':
        """The items at these indices, with the same classes, transform, seed and what was dropped before."""
        items = [self.items[i] for i in keep] if self.from_files else self.items.select(keep)
        subset = CXRDataset(items, self.class_names, self.transform, self.seed)
        subset.dropped = list(self.dropped)
        if self.failed_check is not None:
            subset.failed_check = {new for new, old in enumerate(keep) if old in self.failed_check}
        if self.kept is not None:
            subset.kept = [self.kept[i] for i in keep]
        return subset

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random transforms the items get (with a seed)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def image(self, index: int) -> np.ndarray:
        """The decoded image: float32 (H, W) in [0, 1]."""
        if self.from_files:
            return read_image(self.items[index]['path'])
        image = self.items[index]['image']
        if image.get('bytes') is None and image.get('path'):  # a dataset that refers to its image files
            return read_image(image['path'])
        return read_image_bytes(image.get('bytes') or b'', self.name(index))

    def fingerprint(self) -> str:
        """The SHA-256 of what the items are, in order: each one's image bytes (their SHA-256), class, source and
        patient. Equal data, equal fingerprint; a run records it, so that it is never continued or reused on other data."""
        if self.from_files:  # every file was hashed when its source was opened (None: unreadable, left out later)
            digests = [r.get('sha256') for r in self.items]
        else:  # a few hundred images' bytes in memory at a time, not the whole column
            digests = [bytes_sha256(image['bytes']) if image.get('bytes') is not None else _path_sha256(image.get('path'))
                       for batch in self.items.select_columns(['image']).iter(batch_size=256) for image in batch['image']]
        labels = [self.class_names[k] for k in self.labels()]
        return json_sha256([list(row) for row in zip(digests, labels, self.column('source'), self.column('patient_id'))])

    def _checked_image(self, index: int) -> np.ndarray:
        """image(index), where a failure of an image that read well when checked is the machine's (ImageChangedError)."""
        try:
            return self.image(index)
        except ImageReadError as e:
            if self.failed_check is None or index in self.failed_check:
                raise
            raise ImageChangedError(f'{e} It read well when the run started: it was deleted, replaced or cannot be '
                                    'read from the disk now.') from e

    def window(self, index: int) -> Optional[Tuple[float, float, float, float]]:
        """The part of an item's film its transform keeps (shares: left, top, right, bottom), None for all of it;
        found once per item (the film read and the detector run only for a transform that cuts to the lungs)."""
        preprocess = self._split_transform[0]
        if preprocess is None or preprocess.crop is None:
            return None
        if index not in self._windows:
            self._windows[index] = preprocess.window(self.image(index))
        return self._windows[index]

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

    def patient_groups(self) -> Tuple[List[Any], str]:
        """What a bootstrap resamples: each image's patient (an image without one is its own), and 'patient' or 'image'."""
        groups = [p if p is not None else f'image {i}' for i, p in enumerate(self.column('patient_id'))]
        return groups, 'patient' if len(set(groups)) < len(groups) else 'image'

    def file_names(self) -> List[str]:
        """The file name of every item, what box files and reports match images by ('' where unknown)."""
        if self.from_files:
            return [Path(r['path']).name for r in self.items]
        return [name or '' for name in self.column('file_name')]

    def labels(self) -> List[int]:
        """The class index of every item, in order."""
        if self.from_files:
            return [self.class_names.index(r['label']) for r in self.items]
        return [int(label) for label in self.items['label']]

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        if self.kept is not None:  # preprocessed once (readable(keep=True)): only the steps after it run
            image, transform = Preprocess.unpack(self.kept[index]), self._split_transform[1]
            if transform is None:
                return image, self.label(index)
        else:
            image, transform = self._checked_image(index), self.transform
        if transform is None:
            return torch.from_numpy(image)[None], self.label(index)
        if self.seed is None:
            return transform(image), self.label(index)
        # independent of the global RNG, which loader look-ahead and resumption would otherwise shift
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, self.epoch, index))
            return transform(image), self.label(index)


def _path_sha256(path: Optional[str]) -> Optional[str]:
    """The SHA-256 of an image file a dataset refers to, None when it cannot be read (it is left out when decoded)."""
    try:
        return file_sha256(path) if path else None
    except OSError:
        return None


def _undecoded_images(items: 'datasets.Dataset') -> 'datasets.Dataset':
    """The dataset with its image column as stored bytes: the datasets library would decode any size."""
    import datasets

    feature = items.features.get('image')
    if isinstance(feature, datasets.Image) and feature.decode:
        return items.cast_column('image', datasets.Image(decode=False))
    return items


class BalancedSampler(Sampler):
    """Draws with replacement, every class equally likely; reseeded each epoch.

    groups: each item's class, or its (class, source) pair: then every class is equally likely and,
    within a class, every source it comes from, so that no collection stands for a class.
    num_samples: draws per epoch (default: as many as items), which fixes an epoch's cost whatever the data's size.
    """

    def __init__(self, groups: Sequence[Hashable], seed: int = 0, num_samples: Optional[int] = None):
        top = [g[0] if isinstance(g, tuple) else g for g in groups]
        counts = Counter(groups)
        subgroups = Counter(t for t, _ in {(t, g) for t, g in zip(top, groups)})  # e.g. sources per class
        # each class weighs 1 in all: its subgroups 1/subgroups each, shared by their items
        self.weights = torch.tensor([1. / (counts[g] * subgroups[t]) for g, t in zip(groups, top)],
                                    dtype=torch.double)
        self.seed, self.epoch = seed, 0
        self.num_samples = num_samples or len(self.weights)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draws to make."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = seeded_generator(self.seed, self.epoch)
        return iter(torch.multinomial(self.weights, self.num_samples, True, generator=generator).tolist())


def _split_records(records: List[Record], split: str, seed: int
                   ) -> Tuple[List[Record], List[str], List[Tuple[str, str]]]:
    """The records of one split, the class names, and the files left out (duplicates, label conflicts)."""
    records, duplicates, conflicts = deduplicate(records)  # labels were folded by the source's reader
    dropped = [(display(r['path']), why) for r, why in [*duplicates, *conflicts]]
    class_names = sorted({r['label'] for r in records})
    if any(r.get('split') for r in records):
        return [r for r in records if r.get('split') == split], class_names, dropped
    return patient_split(assign_patients(records), seed=seed)[split], class_names, dropped


def _from_records(records: List[Record], split: str, seed: int, transform: Optional[Transform],
                  augment_seed: Optional[int]) -> CXRDataset:
    items, names, dropped = _split_records(records, split, seed)
    dataset = CXRDataset(items, names, transform, augment_seed)
    dataset.dropped = dropped
    return dataset


def open_dataset(
        source: Optional[Union[str, Path]], split: str, transform: Optional[Transform] = None, seed: int = 0,
        augment_seed: Optional[int] = None,
) -> CXRDataset:
    """Open one split ('train', 'validation' or 'test') of a data source as a CXRDataset.

    seed picks the patient split of sources without one; augment_seed makes transforms reproducible per item.
    """
    if split not in SPLITS:
        raise BadInputError(f"Unknown split '{split}': choose one of {', '.join(SPLITS)}.")
    import datasets

    if source in (None, 'sample') or (Path(source).is_dir() and Path(source).resolve() == sample_dir()):
        # the bundled folder by its path too: its labels come from Kermany's file names, as the trainer reads them
        return _from_records(sample_records(), split, seed, transform, augment_seed)
    if str(source).startswith(HUB_PREFIX):  # the Hub's repo, never a local folder of the same name
        hub = datasets.load_dataset(str(hub_snapshot(*parse_hub_ref(str(source)[len(HUB_PREFIX):]))), split=split)
        return CXRDataset(hub, hub.features['label'].names, transform, augment_seed)
    path = Path(source)
    if (path / 'data' / 'dataset_dict.json').exists():  # written by prepare_data.py
        path = path / 'data'
    if (path / 'dataset_dict.json').exists():
        prepared = datasets.load_from_disk(str(path))
        if split not in prepared:
            raise BadInputError(f"{display(source)}: no '{split}' split (it has {', '.join(prepared)}).")
        return CXRDataset(prepared[split], prepared[split].features['label'].names, transform, augment_seed)
    if path.is_file():
        return _from_records(manifest_records(path), split, seed, transform, augment_seed)
    if path.is_dir():
        return _from_records(folder_records(path), split, seed, transform, augment_seed)
    raise FileNotFoundError(f'{display(source)}: no such data source (folder, manifest, prepared dataset or '
                            'hf-hub:id).')
