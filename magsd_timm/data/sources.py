"""Where radiographs come from: folder trees, manifests and the published CXR collections.

Every source yields records: dicts with ``path``, ``label``, ``patient_id`` (None when unknown),
``source`` and ``split`` (None, or the split the layout itself gives). Labels are mapped to the
project's class names by each converter's (configurable) map. A converter returns ``SourceRecords``:
the records, and in ``left_out`` each row it did not take with the reason (a label outside the task,
a lateral view, a missing image, ...), for skipped.json and the dataset card. ``fold_labels`` makes
spellings of one class that differ only in case or surrounding white space one class, and says so;
an empty label or an unknown split is an error.
"""
import csv
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Tuple, Union

from ..errors import BadInputError, display
from .sample import KERMANY_LABELS, kermany_kind, kermany_patient_id

__all__ = [
    'IEEE8023_FRONTAL_VIEWS', 'IEEE8023_LABELS', 'IMAGE_SUFFIXES', 'Record', 'SPLIT_NAMES', 'SourceRecords',
    'covid_radiography_records', 'covidx_records', 'fold_labels',
    'folder_records', 'ieee8023_records', 'kermany_records', 'manifest_records',
]

_logger = logging.getLogger(__name__)

Record = Dict[str, Optional[str]]
PathLike = Union[str, Path]
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp', '.dcm', '.dicom')
SPLIT_NAMES = {'train': 'train', 'val': 'validation', 'valid': 'validation', 'validation': 'validation',
               'test': 'test'}


def _record(path: Path, label: str, patient_id: Optional[str], source: str, split: Optional[str] = None) -> Record:
    return dict(path=str(path), label=label, patient_id=patient_id, source=source, split=split)


def _images(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob('*') if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class SourceRecords(list):
    """A source's records, and what it left out before any image was read: (path, reason) pairs."""

    def __init__(self, records: Iterable[Record] = (), left_out: Iterable[Tuple[str, str]] = ()):
        super().__init__(records)
        self.left_out = list(left_out)


def _said(records: SourceRecords, what: str) -> SourceRecords:
    """A source's records, having logged how many rows it left out."""
    if records.left_out:
        _logger.info('%s: left out %d rows (listed in skipped.json)', what, len(records.left_out))
    return records


def _mapped(records: Iterable[Record], label_map: Mapping[str, Optional[str]], what: str) -> SourceRecords:
    """Apply a label map; records whose label maps to None are left out, each with its reason."""
    kept = SourceRecords()
    for record in records:
        label = label_map.get(record['label'])
        if label is None:
            kept.left_out.append((display(record['path']),
                                  f"{what}: label '{record['label']}' is not a class of the task"))
        else:
            kept.append(dict(record, label=label))
    return _said(kept, what)


def _read_csv(path: Path, required: Iterable[str], what: str) -> List[Dict[str, str]]:
    """The rows of a CSV file (a UTF-8 byte-order mark allowed, short rows padded with ''); its required columns checked."""
    try:
        with path.open(newline='', encoding='utf-8-sig') as f:
            reader = csv.DictReader(f, restval='')
            rows = list(reader)
            columns = reader.fieldnames or []
    except UnicodeDecodeError as e:
        raise BadInputError(f'{display(path)}: the {what} is not UTF-8 text ({e.reason} at byte {e.start}).') from e
    except csv.Error as e:
        raise BadInputError(f'{display(path)}: the {what} is not a readable CSV file ({e}).') from e
    _require_columns(path, columns, required, what)
    return [{k: v if v is not None else '' for k, v in row.items() if k is not None} for row in rows]


def _require_columns(path: Path, columns: List[str], required: Iterable[str], what: str) -> None:
    """Refuse a table without the columns it needs, naming them and the ones it has."""
    missing = [c for c in required if c not in columns]
    if missing:
        raise BadInputError(f"{display(path)}: the {what} lacks the column(s) {', '.join(missing)} (it has "
                            f"{', '.join(columns) if columns else 'none'}).")


def _inside(root: Path, *parts: str) -> Optional[Path]:
    """root/parts, or None when the parts lead outside root ('../', an absolute path, a link out of it)."""
    path = root.joinpath(*parts)
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    return path


def _outside_why(root: Path, *parts: str) -> str:
    """Why root/parts is not inside root: a symbolic link on the way (named, with where it leads), or the parts."""
    path = root
    for part in Path(*parts).parts:
        path = path / part
        if path.is_symlink() and not _inside(root, *path.relative_to(root).parts):
            return (f'{display(path.relative_to(root))} is a symbolic link to {display(path.resolve())}, outside the '
                    'collection (copy the files there, or give that folder instead)')
    return 'the folder or filename leads outside the collection'


def _require_dir(root: PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'{display(root)}: no such folder.')
    return root


def fold_labels(records: Iterable[Record]) -> Tuple[List[Record], List[str]]:
    """Records whose label variants ('Normal', 'normal ', 'NORMAL') are one class, and a note per folded class.

    The class keeps its most frequent stripped spelling (ties: the first in sorted order). An empty
    label is an error naming the record.
    """
    records = list(records)
    variants: Dict[str, Counter] = defaultdict(Counter)  # case-folded, stripped label -> raw spellings
    for record in records:
        raw = str(record['label'] if record['label'] is not None else '')
        if not raw.strip():
            raise BadInputError(f"{display(record['path'])}: empty label; every image needs its class.")
        variants[raw.strip().casefold()][raw] += 1
    canonical = {}
    for key, counts in variants.items():
        stripped = Counter()
        for raw, count in counts.items():
            stripped[raw.strip()] += count
        canonical[key] = min(stripped, key=lambda label: (-stripped[label], label))
    notes = [f"labels {', '.join(repr(v) for v in sorted(variants[key]))} are one class, '{canonical[key]}'"
             for key in sorted(variants) if len(variants[key]) > 1]
    for note in notes:
        _logger.warning('%s', note)
    return [dict(r, label=canonical[str(r['label']).strip().casefold()]) for r in records], notes


def folder_records(root: PathLike, source: Optional[str] = None) -> List[Record]:
    """A class-per-folder tree, optionally under split folders (train/val/test): root/[split/]class/*."""
    root = _require_dir(root)
    source = source or display(root.name)
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if folders and all(p.name.lower() in SPLIT_NAMES for p in folders):
        tops = [(SPLIT_NAMES[p.name.lower()], p) for p in folders]
    else:
        tops = [(None, root)]
    records = [
        _record(path, display(class_dir.name), None, source, split)
        for split, top in tops for class_dir in sorted(p for p in top.iterdir() if p.is_dir())
        for path in _images(class_dir)
    ]
    if not records:
        raise BadInputError(f'{display(root)}: no images in class folders (expected root/[train|val|test/]class/image).')
    return fold_labels(records)[0]


def manifest_records(path: PathLike) -> List[Record]:
    """A CSV or Parquet manifest: path, label, and optionally patient_id, source, split; paths relative to it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{display(path)}: no such manifest.')
    if path.suffix.lower() == '.parquet':
        import pyarrow.parquet as pq
        table = pq.read_table(path)
        _require_columns(path, table.column_names, ('path', 'label'), 'manifest')
        rows = table.to_pylist()
    else:
        rows = _read_csv(path, ('path', 'label'), 'manifest')
    if not rows:
        raise BadInputError(f'{display(path)}: the manifest has no rows.')
    records = []
    for number, row in enumerate(rows, start=1):
        where = f'{display(path)}, row {number}'
        if not str(row['path'] or '').strip():
            raise BadInputError(f'{where}: empty path.')
        label = str(row['label'] if row['label'] is not None else '').strip()
        if not label:
            raise BadInputError(f'{where} ({display(row["path"])}): empty label; every image needs its class.')
        split = str(row.get('split') or '').strip()
        if split and split.lower() not in SPLIT_NAMES:
            raise BadInputError(f"{where} ({display(row['path'])}): unknown split '{split}'; use train, validation "
                                "(or val, valid), test, or leave it empty.")
        image = Path(row['path'])
        records.append(_record(
            image if image.is_absolute() else path.parent / image, row['label'],
            str(row['patient_id']) if row.get('patient_id') not in (None, '') else None,
            row.get('source') or path.stem, SPLIT_NAMES[split.lower()] if split else None))
    return fold_labels(records)[0]


def kermany_records(root: PathLike, label_map: Optional[Mapping[str, Optional[str]]] = None) -> List[Record]:
    """Kermany 'chest_xray': {train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg; personN_bacteria_M is patient N."""
    root = _require_dir(root)
    records = []
    for path in _images(root):
        split_dir = next((p for p in path.relative_to(root).parts if p.lower() in SPLIT_NAMES), None)
        records.append(_record(path, kermany_kind(path), kermany_patient_id(path.name), 'kermany',
                               SPLIT_NAMES[split_dir.lower()] if split_dir else None))
    return _mapped(records, dict(KERMANY_LABELS, **(label_map or {})), 'kermany')


IEEE8023_LABELS = {
    'COVID-19': 'COVID-19', 'Viral': 'viral pneumonia', 'Bacterial': 'bacterial pneumonia', 'No Finding': 'normal',
    # the June 2020 snapshot names the organism alone
    'SARS': 'viral pneumonia', 'MERS': 'viral pneumonia', 'Influenza': 'viral pneumonia',
    'Varicella': 'viral pneumonia', 'Streptococcus': 'bacterial pneumonia', 'Klebsiella': 'bacterial pneumonia',
    'Legionella': 'bacterial pneumonia', 'E.Coli': 'bacterial pneumonia', 'Staphylococcus': 'bacterial pneumonia',
    'Mycoplasma Bacterial Pneumonia': 'bacterial pneumonia', 'Chlamydophila': 'bacterial pneumonia',
}
IEEE8023_FRONTAL_VIEWS = ('PA', 'AP', 'AP Supine')
IEEE8023_COLUMNS = ('patientid', 'finding', 'view', 'modality', 'filename')  # and 'folder', images/ if absent


def _ieee8023_class(finding: str, label_map: Mapping[str, Optional[str]]) -> Tuple[Optional[str], str]:
    """The class of a finding, and why not when it has none.

    A hierarchical finding ('Pneumonia/Viral/COVID-19') takes its most specific mapped part; a combined
    one ('COVID-19, ARDS') the one class its parts name.
    """
    if finding.strip().lower() in ('', 'todo'):
        return None, f"finding not given ('{finding}')"
    named = []
    for combined in finding.split(','):
        parts = [p.strip() for p in combined.split('/')]
        known = [p for p in reversed(parts) if p in label_map]
        if known and label_map[known[0]] is not None:
            named.append(label_map[known[0]])
    classes = sorted(set(named))
    if len(classes) == 1:
        return classes[0], ''
    if classes:
        return None, f"finding '{finding}' names {len(classes)} classes ({', '.join(classes)})"
    return None, f"finding '{finding}' is not a class of the task"


def ieee8023_records(root: PathLike, label_map: Optional[Mapping[str, Optional[str]]] = None,
                     classes: Optional[Iterable[str]] = None) -> SourceRecords:
    """ieee8023 covid-chestxray-dataset: metadata.csv + images/; frontal X-rays only; classes: those to keep."""
    root = _require_dir(root)
    label_map = dict(IEEE8023_LABELS, **(label_map or {}))
    keep = set(classes) if classes is not None else None
    metadata = root / 'metadata.csv'
    if not metadata.is_file():
        raise FileNotFoundError(f'{display(metadata)}: no such file (an ieee8023 folder holds metadata.csv and images/).')
    rows = _read_csv(metadata, IEEE8023_COLUMNS, 'ieee8023 metadata')
    if not rows:
        raise BadInputError(f'{display(metadata)}: the ieee8023 metadata has no rows.')
    records = SourceRecords()
    for row in rows:
        folder = row.get('folder') or 'images'
        path = _inside(root, folder, row['filename']) if row['filename'].strip() else None
        view = row['view'].strip()
        label, why = _ieee8023_class(row['finding'], label_map)
        if path is None:
            path, why = root / folder / row['filename'], (_outside_why(root, folder, row['filename'])
                                                          if row['filename'].strip() else 'the filename is empty')
        elif row['modality'] != 'X-ray':
            why = f"modality {row['modality'] or 'not given'}, not X-ray"
        elif view not in IEEE8023_FRONTAL_VIEWS:
            why = f"view '{view}' is not frontal ({', '.join(IEEE8023_FRONTAL_VIEWS)})" if view else 'view not given'
        elif not path.is_file():
            why = 'listed in metadata.csv, but the image is missing'
        elif label is not None and keep is not None and label not in keep:
            why = f"class '{label}' is not taken from ieee8023 here (it takes {', '.join(sorted(keep))})"
        if label is None or why:
            records.left_out.append((display(path), f'ieee8023: {why}'))
        else:
            records.append(_record(path, label, row['patientid'].strip() or None, 'ieee8023'))
    return _said(records, 'ieee8023')


COVID_RADIOGRAPHY_LABELS = {'COVID': 'COVID-19', 'Normal': 'normal', 'Viral Pneumonia': 'viral pneumonia',
                            'Lung_Opacity': None}


def covid_radiography_records(
        root: PathLike, label_map: Optional[Mapping[str, Optional[str]]] = None) -> List[Record]:
    """COVID-19 Radiography Database: {COVID,Lung_Opacity,Normal,Viral Pneumonia}/images/*.png; no patient ids."""
    root = _require_dir(root)
    records = [
        _record(path, class_dir.name, None, 'covid19-radiography')
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir())
        for path in _images(class_dir / 'images' if (class_dir / 'images').is_dir() else class_dir)
    ]
    return _mapped(records, dict(COVID_RADIOGRAPHY_LABELS, **(label_map or {})), 'covid19-radiography')


COVIDX_LABELS = {'COVID-19': 'COVID-19', 'positive': 'COVID-19', 'normal': 'normal', 'negative': 'normal',
                 'pneumonia': None}


def covidx_records(
        root: PathLike, label_files: Mapping[str, PathLike],
        label_map: Optional[Mapping[str, Optional[str]]] = None) -> List[Record]:
    """COVIDx CXR: label files of 'patient_id filename class source' lines, images in root/<split>/."""
    root = _require_dir(root)
    records, outside = [], []
    for split, label_file in label_files.items():
        for line in Path(label_file).read_text().splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            patient, filename, label, origin = fields[:4]
            path = _inside(root, split, filename)
            if path is None:
                outside.append((display(root / split / filename), f'covidx: {_outside_why(root, split, filename)}'))
                continue
            records.append(_record(path, label, patient, f'covidx/{origin}', SPLIT_NAMES.get(split, split)))
    kept = _mapped(records, dict(COVIDX_LABELS, **(label_map or {})), 'covidx')
    kept.left_out = outside + kept.left_out
    return kept
