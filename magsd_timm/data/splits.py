"""Honest splits: by patient, stratified, seeded; copies removed; folds and held-out sources.

A patient's images always share one split, so no patient is both trained on and tested on. Records
without a patient id count as one patient per image (``patient_id_known`` says which). Exact
duplicate files (the same bytes, as public sets share images) keep one copy: the first by
(source, path) order, so the choice is reproducible. Near-copies (one film resized, re-encoded,
cropped or with other contrast: near_copies.py) keep one copy too, so no film can sit in two splits:
the one with a known patient id, then the most pixels, then the first by (source, path). Copies that
carry different labels are a label conflict: no order can say which label is right, so every copy is
left out and reported.
"""
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Mapping, NamedTuple, Sequence, Tuple

from ..errors import display
from ..utils.digest import file_sha256
from .near_copies import Fingerprint, near_copy_groups, near_copy_pairs
from .sources import Record

__all__ = [
    'SPLITS', 'NearCopy', 'assign_patients', 'check_no_patient_overlap', 'deduplicate',
    'drop_near_copies', 'patient_folds', 'patient_split', 'patient_subset', 'source_holdout',
]

SPLITS = ('train', 'validation', 'test')


Resolved = Tuple[List[Record], List[Tuple[Record, str]], List[Tuple[Record, str]]]  # kept, copies, conflicts


def deduplicate(records: Sequence[Record]) -> Resolved:
    """Records with a 'sha256' added, one per distinct file; the dropped duplicates and the label conflicts, with why.

    Copies of one file with one label keep the first by (source, path); copies with different labels
    are all left out as conflicts.
    """
    groups: Dict[str, List[Record]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r['source'] or '', r['path'])):
        try:
            digest = record.get('sha256') or file_sha256(record['path'])
        except OSError:  # missing or unreadable: no copy of anything; the reader names it when it is read
            groups[f"unreadable:{record['path']}"].append(dict(record, sha256=None))
            continue
        groups[digest].append(dict(record, sha256=digest))
    return _one_per_group(list(groups.values()), lambda kept, r: f"exact duplicate of {display(kept['path'])}",
                          lambda r: f'sha256 {r["sha256"][:12]}')


def _one_per_group(groups: Sequence[List[Record]], why_copy: Callable[[Record, Record], str],
                   what: Callable[[Record], str]) -> Resolved:
    """Of each group of copies (most wanted first): the one kept, the others with why, or all as a label conflict."""
    kept, duplicates, conflicts = [], [], []
    for copies in groups:
        labels = sorted({r['label'] for r in copies})
        if len(labels) > 1:
            listed = '; '.join(f"{display(r['path'])} as '{r['label']}'" for r in copies)
            conflicts += [(r, f'label conflict: the same image ({what(r)}) is labelled '
                              f'{", ".join(repr(x) for x in labels)}: {listed}') for r in copies]
            continue
        kept.append(copies[0])
        duplicates += [(r, why_copy(copies[0], r)) for r in copies[1:]]
    return kept, duplicates, conflicts


class NearCopy(NamedTuple):
    """A record left out as a near-copy of the one kept, with their check score (or the group's best)."""

    kept: Record
    dropped: Record
    score: float


def drop_near_copies(records: Sequence[Record], prints: Mapping[str, Fingerprint]
                     ) -> Tuple[List[Record], List[Tuple[Record, str]], List[Tuple[Record, str]], List[NearCopy]]:
    """One record per film: near-copies (by the fingerprints, keyed by path) left out, or all of them on a label conflict.

    Returns the kept records (in their order), the dropped copies and the conflicts with why, and the
    dropped copies as NearCopy for the card's table.
    """
    records = list(records)
    pairs = near_copy_pairs([prints[r['path']] for r in records])
    score_of: Dict[int, float] = defaultdict(float)  # by id(record): its best score in its group
    for (i, j), score in pairs.items():
        for r in (records[i], records[j]):
            score_of[id(r)] = max(score_of[id(r)], score)
    def preference(i: int) -> Tuple[bool, int, str, str]:  # the copy kept: a patient id, most pixels, first path
        r = records[i]
        return not r.get('patient_id'), -prints[r['path']].pixels, r['source'] or '', r['path']

    groups = [sorted(g, key=preference) for g in near_copy_groups(len(records), list(pairs))]
    _, dropped, conflicts = _one_per_group(
        [[records[i] for i in g] for g in groups],
        lambda kept, r: f"near copy of {display(kept['path'])} (similarity {score_of[id(r)]:.3f})",
        lambda r: 'near copies of one film')
    left_out = {id(r) for r, _ in [*dropped, *conflicts]}
    near = [NearCopy(records[g[0]], records[i], score_of[id(records[i])]) for g in groups for i in g[1:]
            if id(records[g[0]]) not in left_out]
    return [r for r in records if id(r) not in left_out], dropped, conflicts, near


def assign_patients(records: Sequence[Record]) -> List[Record]:
    """Give every record a patient id: unknown ones become one patient per image, flagged as such."""
    out = []
    for record in records:
        known = bool(record.get('patient_id'))
        patient = (f"{record['source']}/{record['patient_id']}" if known
                   else f"{record['source']}/image:{display(Path(record['path']).name)}")
        out.append(dict(record, patient_id=patient, patient_id_known=known))
    return out


def _patients_by_label(records: Sequence[Record]) -> Dict[str, List[str]]:
    """Each patient once, under its most frequent label (ties: alphabetical), patients sorted."""
    labels: Dict[str, Counter] = defaultdict(Counter)
    for record in records:
        labels[record['patient_id']][record['label']] += 1
    strata: Dict[str, List[str]] = defaultdict(list)
    for patient in sorted(labels):
        counts = labels[patient]
        strata[min(counts, key=lambda label: (-counts[label], label))].append(patient)
    return strata


def _allocate(count: int, fractions: Sequence[float]) -> List[int]:
    """Largest-remainder split of count items by fractions."""
    exact = [count * f for f in fractions]
    sizes = [int(e) for e in exact]
    for i in sorted(range(len(exact)), key=lambda i: exact[i] - sizes[i], reverse=True)[:count - sum(sizes)]:
        sizes[i] += 1
    return sizes


def patient_split(
        records: Sequence[Record], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
) -> Dict[str, List[Record]]:
    """Split records into train/validation/test by patient, stratified by label, shuffled with seed."""
    if len(fractions) != len(SPLITS) or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f'fractions {tuple(fractions)} must be three non-negative numbers summing to 1.')
    rng = random.Random(seed)
    split_of: Dict[str, str] = {}
    for _label, patients in sorted(_patients_by_label(records).items()):
        rng.shuffle(patients)
        start = 0
        for split, size in zip(SPLITS, _allocate(len(patients), fractions)):
            split_of.update({p: split for p in patients[start:start + size]})
            start += size
    splits = {split: [r for r in records if split_of[r['patient_id']] == split] for split in SPLITS}
    check_no_patient_overlap(splits)
    return splits


def patient_subset(records: Sequence[Record], per_class: int, seed: int = 0) -> List[Record]:
    """At most per_class images of each class, as whole patients drawn at random (seeded), a patient under
    its most frequent label: a smaller set for quick runs that keeps patients whole and tops up small classes."""
    assigned = assign_patients(records)
    images = Counter(r['patient_id'] for r in assigned)
    rng = random.Random(seed)
    chosen = set()
    for _label, patients in sorted(_patients_by_label(assigned).items()):
        rng.shuffle(patients)
        taken = 0
        for patient in patients:
            if taken + images[patient] <= per_class:
                chosen.add(patient)
                taken += images[patient]
    return [r for r, a in zip(records, assigned) if a['patient_id'] in chosen]


def check_no_patient_overlap(splits: Mapping[str, Sequence[Record]]) -> None:
    """Raise ValueError naming every patient found in more than one split."""
    where: Dict[str, set] = defaultdict(set)
    for split, records in splits.items():
        for record in records:
            where[record['patient_id']].add(split)
    shared = {p: sorted(s) for p, s in where.items() if len(s) > 1}
    if shared:
        listed = '; '.join(f'{p} in {", ".join(s)}' for p, s in sorted(shared.items())[:20])
        raise ValueError(f'{len(shared)} patient(s) appear in more than one split: {listed}.')


def patient_folds(records: Sequence[Record], k: int, seed: int = 0) -> List[int]:
    """A fold index (0..k-1) per record: k folds by patient, stratified by label, shuffled with seed."""
    if k < 2:
        raise ValueError(f'k folds need k >= 2, got {k}.')
    rng = random.Random(seed)
    fold_of: Dict[str, int] = {}
    offset = 0
    for _label, patients in sorted(_patients_by_label(records).items()):
        rng.shuffle(patients)
        fold_of.update({p: (offset + i) % k for i, p in enumerate(patients)})
        offset += len(patients)  # the next label's patients continue the round, keeping folds even
    return [fold_of[r['patient_id']] for r in records]


def source_holdout(records: Sequence[Record], source: str) -> Dict[str, List[Record]]:
    """Leave one source out: its records are the test split, the others train (patients never shared)."""
    sources = sorted({r['source'] for r in records})
    if source not in sources:
        raise ValueError(f"Unknown source '{source}': the records come from {', '.join(sources)}.")
    splits = {'train': [r for r in records if r['source'] != source],
              'test': [r for r in records if r['source'] == source]}
    check_no_patient_overlap(splits)
    return splits
