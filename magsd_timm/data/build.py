"""Build a Hugging Face DatasetDict from records: checked images, no copies, patient splits, a card.

Nothing half-built is ever left at the output: the dataset is written to a staging folder beside
it and moved into place at the end; an existing output is only replaced when asked. One build at a
time writes an output (a second is refused), and what a killed build left beside it is recovered
or removed by the next: a kept previous output (``.NAME.old``) is put back if the output is missing,
and staging folders are deleted.
"""
import io
import logging
from collections import Counter
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from huggingface_hub import DatasetCard, DatasetCardData
from PIL import Image

from ..errors import BadInputError, display
from ..utils.digest import bytes_sha256
from ..utils.hub_files import hub_content
from ..utils.outputs import atomic_folder, check_no_overlap, exclusive_lock, recover_folder, strict_json
from ..utils.tables import markdown_table
from .near_copies import Fingerprint, NoStructureError, fingerprint
from .reader import ImageReadError, decode_image, is_dicom, read_file_bytes
from .sources import Record, fold_labels
from .splits import (
    SPLITS,
    NearCopy,
    assign_patients,
    check_no_patient_overlap,
    deduplicate,
    drop_near_copies,
    patient_folds,
    patient_split,
    patient_subset,
    source_holdout,
)

if TYPE_CHECKING:
    import datasets

__all__ = ['KNOWN_SOURCES', 'build_dataset', 'load_prepared', 'render_card']

_logger = logging.getLogger(__name__)


# provenance of the collections the converters read: (hub id or reference, licence, note)
KNOWN_SOURCES = {
    'kermany16': ('Kermany, Zhang and Goldbaum (2018), Mendeley Data V2, doi:10.17632/rscbjbr9sj.2', 'cc-by-4.0',
                  'pediatric AP films, age 1-5 (Guangzhou Women and Children\'s Medical Center)'),
    'kermany': ('Kermany, Zhang and Goldbaum (2018), Mendeley Data V2, doi:10.17632/rscbjbr9sj.2', 'cc-by-4.0',
                'pediatric AP films, age 1-5 (Guangzhou Women and Children\'s Medical Center)'),
    'ieee8023': ('Cohen et al., COVID-19 image data collection (github ieee8023/covid-chestxray-dataset)', 'other',
                 'adult images gathered from publications and websites; each image keeps its own licence (metadata.csv)'),
    'covid19-radiography': ('COVID-19 Radiography Database (Chowdhury et al. 2020; Rahman et al. 2021)', 'other',
                            'images pooled from several public sets; no patient ids; see the collection\'s terms'),
}


def _size_category(n: int) -> str:
    for limit, name in ((1_000, 'n<1K'), (10_000, '1K<n<10K'), (100_000, '10K<n<100K'), (1_000_000, '100K<n<1M')):
        if n < limit:
            return name
    return 'n>1M'


def _stored_image(path: str, data: bytes, image: np.ndarray, dicom: bool) -> Dict[str, Any]:
    """What the dataset stores of a file: the very bytes that were checked and hashed, or for DICOM a lossless 16-bit
    PNG of the image read from them (PIL cannot decode DICOM)."""
    if not dicom:
        return {'bytes': data, 'path': display(Path(path).name)}
    buffer = io.BytesIO()
    Image.fromarray(np.round(image * 65535).astype(np.uint16)).save(buffer, format='PNG')
    return {'bytes': buffer.getvalue(), 'path': display(Path(path).with_suffix('.png').name)}


def _provenance(source: str) -> str:
    """Reference, note and licence of a known collection (covidx/<origin> counts as its origin's)."""
    known = KNOWN_SOURCES.get(source.split('/')[0])
    if known is None:
        return "user-provided images: provenance and licence as their owner states"
    reference, licence, note = known
    return f'{reference}; {note} (licence: {licence})'


def render_card(
        splits: Dict[str, List[Record]], class_names: Sequence[str], split_method: str, pretty_name: str,
        num_skipped: int, num_duplicates: int, num_conflicts: int = 0, left_out: Sequence[Tuple[str, str]] = (),
        near_copies: Sequence[NearCopy] = (),
) -> str:
    """The dataset card (README.md): metadata (huggingface_hub's DatasetCardData), counts, provenance, biases."""
    records = [r for rs in splits.values() for r in rs]
    sources = sorted({r['source'] for r in records})
    licences = {KNOWN_SOURCES.get(s.split('/')[0], (None, 'other', None))[1] for s in sources}
    unknown = sum(not r['patient_id_known'] for r in records)
    provenance = '\n'.join(f'- `{s}`: {_provenance(s)}' for s in sources)
    pediatric = [s for s in sources if s.startswith('kermany')]
    biases = [
        '- Source decides label: in public COVID-19 sets the positives come from other hospitals, devices and '
        'ages than the negatives, so a model can learn the source instead of the disease. Report results per '
        'source and validate leaving one source out.',
        '- Too few images to measure accuracy in small sets; confidence intervals should be bootstrapped over '
        'patients.',
    ]
    if pediatric:
        biases.insert(0, f'- Pediatric images (sources {", ".join(pediatric)}: age 1-5) next to adult ones: '
                         'age is a confounder of every class they carry.')
    homes = {c: sorted({r['source'] for r in records if r['label'] == c}) for c in class_names}
    alone = [f'{c} only from {srcs[0]}' for c, srcs in homes.items() if len(srcs) == 1 and len(sources) > 1]
    if alone:
        biases.insert(0, f"- Class and source coincide here ({'; '.join(alone)}): every image of such a class shares "
                         'its hospital, device, population and processing, so accuracy on these classes can be '
                         'accuracy at telling the sources apart. See the class-by-source table.')
    per_class = markdown_table(['class', *splits],
                               [[c] + [sum(r['label'] == c for r in splits[s]) for s in splits] for c in class_names])
    per_source = markdown_table(['source', *splits],
                                [[src] + [sum(r['source'] == src for r in splits[s]) for s in splits] for src in sources])
    class_source = markdown_table(['class', *sources], [[c] + [sum(r['label'] == c and r['source'] == src
                                                                    for r in records) for src in sources]
                                                         for c in class_names])
    reasons = Counter(why for _, why in left_out)
    left_out_text = (f'The sources listed {len(left_out)} row(s) that were left out before any image was read '
                     f'(each in `skipped.json`): ' + '; '.join(f'{why} ({n})' for why, n in reasons.most_common())
                     + '.' if left_out else 'The sources left no listed row out.')
    copies_by_source = Counter((c.kept['source'], c.dropped['source']) for c in near_copies)
    near_copy_text = (f'{len(near_copies)} near-copies (the same film resized, re-encoded, cropped or with other '
                      'contrast) were found and left out, one copy of each film kept (listed in `skipped.json`), '
                      'so no film is in two splits. Films of one patient taken alike can count as one film. '
                      'Copies per pair of sources:\n\n'
                      + markdown_table(['copy kept from', 'copy left out from', 'films'],
                                       [[kept, dropped, n] for (kept, dropped), n in sorted(copies_by_source.items())])
                      if near_copies else 'No near-copies (the same film resized, re-encoded, cropped or with other '
                                          'contrast) were found.')
    metadata = DatasetCardData(
        license=licences.pop() if len(licences) == 1 else 'other', task_categories=['image-classification'],
        tags=['medical-imaging', 'chest-x-ray', 'magsd'], pretty_name=pretty_name,
        size_categories=[_size_category(len(records))], source_datasets=sources, class_names=list(class_names),
    )
    values = dict(
        title=' '.join(pretty_name.split()),  # a heading is one line, whatever the name holds
        num_images=len(records), num_patients=len({r['patient_id'] for r in records}),
        num_classes=len(class_names), class_list=', '.join(class_names), num_sources=len(sources),
        split_method=split_method,
        split_table=markdown_table(['split', 'images', 'patients'],
                                   [[s, len(rs), len({r['patient_id'] for r in rs})] for s, rs in splits.items()]),
        class_table=per_class, source_table=per_source, class_source_table=class_source, left_out_text=left_out_text,
        provenance=provenance, biases='\n'.join(biases),
        num_skipped=num_skipped, num_duplicates=num_duplicates, num_conflicts=num_conflicts,
        near_copy_text=near_copy_text,
        patient_statement=(f'{unknown} image(s) had no patient id: each counts as its own patient, so images of '
                           'one person may still sit in different splits.' if unknown else
                           'Every image has a patient id; no patient is in more than one split.'),
    )
    body = Template(hub_content('dataset_card.md').read_text())
    return str(DatasetCard(f'---\n{metadata.to_yaml()}\n---\n\n{body.substitute(values)}'))


Checked = Tuple[List[Record], List[Tuple[Record, str]], Dict[str, Fingerprint], Dict[str, Dict[str, Any]]]


def _validated(records: Sequence[Record]) -> Checked:
    """Each file read once: the records whose bytes decode as a radiograph and can be compared (with the SHA-256 of those
    bytes), the others with the reason, and by path the near-copy fingerprints and what the dataset stores.

    The bytes checked are the bytes hashed and stored: a file replaced while the build runs cannot slip in unchecked.
    No decoded image is kept in memory: a file's bytes (a DICOM film's PNG), which the dataset holds anyway, and its
    fingerprint.
    """
    good, skipped, prints, stored = [], [], {}, {}
    for record in records:
        path = record['path']
        try:
            data = read_file_bytes(path)
            dicom = is_dicom(path, data)
            image = decode_image(data, display(path), dicom)
            prints[path] = fingerprint(image)
        except ImageReadError as e:
            skipped.append((record, str(e)))
            continue
        except NoStructureError as e:
            skipped.append((record, f"{display(path)}: cannot be compared with other films ({e})."))
            continue
        stored[path] = _stored_image(path, data, image, dicom)
        good.append(dict(record, sha256=bytes_sha256(data)))
    return good, skipped, prints, stored


def _check_given_splits(records: Sequence[Record], holdout_source: Optional[str]) -> None:
    """Refuse given splits (a manifest's split column) that leave an image without one, or that a held-out source
    would override."""
    without = next((r for r in records if not r.get('split')), None)
    if without is not None:
        raise BadInputError(f"a manifest's split column assigns images to splits, but {display(without['path'])} "
                            f"(source {without['source']}) has none: give every image its split in manifests, or "
                            'remove the split column to split every source by patient.')
    if holdout_source:
        raise BadInputError(f"--holdout-source {holdout_source}: the manifests' split column gives the splits already; "
                            'remove the column to hold a source out.')


def build_dataset(
        records: Sequence[Record],
        output: Path,
        seed: int = 0,
        fractions: Sequence[float] = (0.7, 0.15, 0.15),
        holdout_source: Optional[str] = None,
        folds: int = 0,
        pretty_name: str = 'Chest X-rays for MAG-SD',
        overwrite: bool = False,
        left_out: Sequence[Tuple[str, str]] = (),
        max_per_class: Optional[int] = None,
        given_splits: bool = False,
) -> Dict[str, Any]:
    """Check, deduplicate and split records by patient, then write a DatasetDict with its card to output.

    given_splits: keep the split each record carries (a manifest's split column) instead of splitting by patient.
    left_out: (path, reason) of the rows the sources did not take (SourceRecords.left_out), listed with
    the rest in skipped.json and counted in the card. max_per_class: keep at most that many images of
    each class, whole patients drawn with the seed (splits.patient_subset), before the split.
    """
    output = Path(output)
    check_no_overlap(output, [r['path'] for r in records], 'dataset output')  # replacing it would delete images
    with exclusive_lock(output, 'prepare_data build'):
        for note in recover_folder(output):
            _logger.warning('%s', note)
        if output.exists() and not overwrite:
            raise FileExistsError(f'{display(output)} exists: choose another output, or replace it (--overwrite).')
        if max_per_class:
            records = patient_subset(records, max_per_class, seed)
        return _build(records, output, seed, fractions, holdout_source, folds, pretty_name, left_out, max_per_class,
                      given_splits)


def _build(records: Sequence[Record], output: Path, seed: int, fractions: Sequence[float],
           holdout_source: Optional[str], folds: int, pretty_name: str,
           left_out: Sequence[Tuple[str, str]], max_per_class: Optional[int], given: bool) -> Dict[str, Any]:
    import datasets

    records, label_notes = fold_labels(records)
    if given:
        _check_given_splits(records, holdout_source)
    valid, skipped, prints, stored = _validated(records)
    for _record, reason in skipped:
        _logger.warning('skipped %s', reason)
    if not valid:
        said = f': {skipped[0][1]}' + (f' (and {len(skipped) - 1} more, alike or not)' if len(skipped) > 1 else '')
        raise BadInputError(f'none of the {len(records)} image(s) could be read as a radiograph{said}')
    kept, duplicates, conflicts = deduplicate(valid)
    kept, near_dropped, near_conflicts, near = drop_near_copies(kept, prints)
    duplicates, conflicts = duplicates + near_dropped, conflicts + near_conflicts
    if near:
        _logger.info('near-copies: %d film(s) had another copy, which is kept (listed in skipped.json)', len(near))
    for record, reason in conflicts:
        _logger.warning('left out %s: %s', display(record['path']), reason)
    if not kept:
        raise BadInputError('no image is left to build a dataset from: every readable one is a copy with a label '
                            'conflict (listed in the log above).')
    kept = assign_patients(kept)
    if given:
        splits = {split: [r for r in kept if r['split'] == split] for split in SPLITS}
        check_no_patient_overlap(splits)
        method = "As the manifests' split column gives (honoured, not re-split); no patient is in two splits."
    elif holdout_source:
        held = source_holdout(kept, holdout_source)
        inner = patient_split(held['train'], (1 - fractions[1], fractions[1], 0.), seed)
        splits = {'train': inner['train'], 'validation': inner['validation'], 'test': held['test']}
        method = (f"Leave one source out: source `{holdout_source}` is the test split; the other sources are split "
                  f"by patient into train and validation ({1 - fractions[1]:.0%} / {fractions[1]:.0%}), stratified "
                  f"by class, seed {seed}.")
    else:
        splits = patient_split(kept, fractions, seed)
        method = (f'By patient, stratified by class (a patient under its most frequent label), seed {seed}: '
                  f'train / validation / test = {" / ".join(f"{f:.0%}" for f in fractions)} of the patients.')
    if max_per_class:
        method = (f'A subset for quick runs: at most {max_per_class} images of each class, whole patients drawn '
                  f'with seed {seed}. ') + method
    class_names = sorted({r['label'] for r in kept})
    _check_usable(splits, class_names, fractions if not (given or holdout_source) else None)
    fold_of = {}
    if folds:
        pool = splits['train'] + splits['validation']
        fold_of = {r['path']: f for r, f in zip(pool, patient_folds(pool, folds, seed))}
        method += f' The train and validation patients also carry a `fold` column: {folds} folds by patient, seed {seed}.'
    features = datasets.Features({
        'image': datasets.Image(), 'label': datasets.ClassLabel(names=class_names),
        'patient_id': datasets.Value('string'), 'patient_id_known': datasets.Value('bool'),
        'source': datasets.Value('string'), 'file_name': datasets.Value('string'),
        'sha256': datasets.Value('string'), 'fold': datasets.Value('int32'),
    })
    dataset = datasets.DatasetDict({
        name: datasets.Dataset.from_list([dict(
            image=stored[r['path']], label=class_names.index(r['label']),
            patient_id=r['patient_id'], patient_id_known=r['patient_id_known'], source=r['source'],
            file_name=display(Path(r['path']).name), sha256=r['sha256'], fold=fold_of.get(r['path'], -1),
        ) for r in rs], features=features)
        for name, rs in splits.items() if rs
    })
    card = render_card(splits, class_names, method, pretty_name, len(skipped), len(duplicates) - len(near_dropped),
                       len(conflicts), left_out, near)
    summary = dict(
        seed=seed, fractions=list(fractions), holdout_source=holdout_source, folds=folds, method=method,
        max_per_class=max_per_class,
        class_names=class_names, patients={s: sorted({r['patient_id'] for r in rs}) for s, rs in splits.items()},
        counts={s: len(rs) for s, rs in splits.items()}, label_folds=label_notes,
    )
    with atomic_folder(output, 'prepared dataset') as staging:
        dataset.save_to_disk(str(staging / 'data'))
        (staging / 'README.md').write_text(card)
        (staging / 'splits.json').write_text(strict_json(summary))
        (staging / 'skipped.json').write_text(strict_json(
            [dict(path=path, reason=why) for path, why in left_out]
            + [dict(path=display(r['path']), reason=why) for r, why in [*skipped, *duplicates, *conflicts]]))
    return dict(summary, skipped=len(skipped), duplicates=len(duplicates) - len(near_dropped),
                near_copies=len(near_dropped), conflicts=len(conflicts), left_out=len(left_out), output=display(output))




def _check_usable(splits: Dict[str, List[Record]], class_names: Sequence[str],
                  fractions: Optional[Sequence[float]]) -> None:
    """Refuse a dataset nobody can train and test on: one class, or an empty split (that fractions asked for)."""
    if len(class_names) < 2:
        raise BadInputError(f"the readable images hold one class ({', '.join(class_names)}): a classifier needs images "
                            'of at least two classes.')
    for (split, records), share in zip(splits.items(), fractions or (1, 1, 1)):
        if share > 0 and not records:
            raise BadInputError(f"the {split} split is empty ({sum(map(len, splits.values()))} readable image(s) of "
                                f"{len({r['patient_id'] for rs in splits.values() for r in rs})} patient(s) in all): "
                                'add images, or give the split its images' + (' (--fractions)' if fractions else '.'))


def load_prepared(path: Path) -> 'datasets.DatasetDict':
    """A DatasetDict written by build_dataset (its data/ folder)."""
    import datasets

    return datasets.load_from_disk(str(Path(path) / 'data'))
