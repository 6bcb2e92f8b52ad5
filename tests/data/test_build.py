"""build_dataset: a DatasetDict with patient splits and a card, never half-written."""
import json
import shutil
from pathlib import Path

import datasets
import pytest
import yaml

from magsd_timm.data.build import build_dataset, load_prepared
from magsd_timm.data.sample import sample_records
from support.files import outputs_in


def _sample_plus(tmp_path):
    """The bundled sample, a corrupt file, and a byte-identical copy of one image under another source."""
    records = sample_records()
    corrupt = tmp_path / 'broken.jpeg'
    corrupt.write_bytes(Path(records[0]['path']).read_bytes()[:3000])
    copy = tmp_path / 'copy.jpeg'
    shutil.copy(records[1]['path'], copy)
    return records + [dict(path=str(corrupt), label='normal', patient_id=None, source='zz', split=None),
                      dict(path=str(copy), label='normal', patient_id=None, source='zz', split=None)]


def test_sample_dataset_has_patient_splits_card_and_saved_assignment(tmp_path):
    left_out = [('lateral.png', 'ieee8023: view not given')]  # what a source did not take
    summary = build_dataset(_sample_plus(tmp_path), tmp_path / 'out', seed=5, left_out=left_out)
    out = tmp_path / 'out'
    dataset = load_prepared(out)
    assert set(dataset) == {'train', 'validation', 'test'}
    assert sum(len(d) for d in dataset.values()) == 16 == sum(summary['counts'].values())
    assert dataset['train'].features['label'].names == ['bacterial pneumonia', 'normal']
    homes = {split for split, d in dataset.items() for p in d['patient_id'] if p == 'kermany16/person1946'}
    assert len(homes) == 1  # person1946's two films share a split
    assert summary['skipped'] == 1 and summary['duplicates'] == 1
    skipped = json.loads((out / 'skipped.json').read_text())
    assert any('broken.jpeg' in s['path'] and 'truncated' in s['reason'] for s in skipped)
    assert any('copy.jpeg' in s['path'] and 'duplicate' in s['reason'] for s in skipped)
    assert {'path': 'lateral.png', 'reason': 'ieee8023: view not given'} in skipped and summary['left_out'] == 1
    saved = json.loads((out / 'splits.json').read_text())
    assert saved['seed'] == 5 and set(saved['patients']['test']) == set(dataset['test']['patient_id'])

    card = (out / 'README.md').read_text()
    meta = yaml.safe_load(card.split('---')[1])
    assert meta['license'] == 'cc-by-4.0' and meta['task_categories'] == ['image-classification']
    assert meta['size_categories'] == ['n<1K'] and meta['source_datasets'] == ['kermany16']
    assert meta['class_names'] == ['bacterial pneumonia', 'normal']
    assert 'seed 5' in card and 'Pediatric' in card and 'Source decides label' in card
    assert '| normal |' in card and '| kermany16 |' in card
    assert 'left out before any image was read' in card and 'ieee8023: view not given (1)' in card
    assert '| class | kermany16 |\n|---|---|\n| bacterial pneumonia | 8 |' in card  # per class and source


def test_images_decode_back_to_the_files(tmp_path):
    build_dataset(sample_records(), tmp_path / 'out')
    row = load_prepared(tmp_path / 'out')['train'][0]
    original = next(r for r in sample_records() if Path(r['path']).name == row['file_name'])
    assert row['image'].size == datasets.Image().decode_example(
        {'path': original['path'], 'bytes': None}).size


NAMES = ['CXR: 150 per class', 'a "quoted" name, it\'s', 'two\nlines', 'Thorax 胸部 ünïcødé', '- not a list #1', '{x}: [y]']


@pytest.mark.parametrize('name', NAMES)
def test_the_card_header_is_data_any_name_round_trips(tmp_path, name):
    from huggingface_hub import DatasetCard

    build_dataset(sample_records(), tmp_path / 'out', seed=0, pretty_name=name)
    card = DatasetCard.load(tmp_path / 'out' / 'README.md')
    assert card.data.pretty_name == name and card.data.class_names == ['bacterial pneumonia', 'normal']
    assert card.data.license == 'cc-by-4.0' and card.data.task_categories == ['image-classification']
    assert card.text.startswith(f"\n# {' '.join(name.split())}\n")  # the heading is one line


def test_unknown_patient_ids_are_said_in_the_card(tmp_path):
    records = [dict(r, patient_id=None, source='mine') for r in sample_records()]
    build_dataset(records, tmp_path / 'out')
    assert '16 image(s) had no patient id' in (tmp_path / 'out' / 'README.md').read_text()


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / 'out'
    build_dataset(sample_records(), out, seed=1)
    with pytest.raises(FileExistsError, match='exists'):
        build_dataset(sample_records(), out, seed=2)
    assert json.loads((out / 'splits.json').read_text())['seed'] == 1
    build_dataset(sample_records(), out, seed=2, overwrite=True)
    assert json.loads((out / 'splits.json').read_text())['seed'] == 2
    assert outputs_in(tmp_path) == ['out']


def test_a_failure_midway_leaves_nothing_half_written(tmp_path, monkeypatch):
    out = tmp_path / 'out'
    build_dataset(sample_records(), out, seed=1)

    def fail(*args, **kwargs):
        raise OSError('disk full')
    monkeypatch.setattr(datasets.DatasetDict, 'save_to_disk', fail)
    with pytest.raises(OSError, match='disk full'):
        build_dataset(sample_records(), out, seed=2, overwrite=True)
    assert json.loads((out / 'splits.json').read_text())['seed'] == 1
    assert outputs_in(tmp_path) == ['out']


def test_leave_one_source_out_and_folds(tmp_path):
    records = [dict(r, source='a' if i % 2 else 'b') for i, r in enumerate(sample_records())]
    build_dataset(records, tmp_path / 'out', holdout_source='b', folds=2)
    dataset = load_prepared(tmp_path / 'out')
    assert set(dataset['test']['source']) == {'b'} and set(dataset['train']['source']) == {'a'}
    assert set(dataset['train']['fold']) <= {0, 1} and set(dataset['test']['fold']) == {-1}
    assert 'Leave one source out' in (tmp_path / 'out' / 'README.md').read_text()


def test_dicom_images_are_stored_as_lossless_16_bit_png(tmp_path):
    import numpy as np

    from magsd_timm.data.reader import image_to_array, read_image
    from support.dicom_files import write_dicom
    from support.image_files import distinct_film
    films = [write_dicom(tmp_path / f'{i}.dcm', distinct_film(i, dtype=np.uint16), 'MONOCHROME1') for i in range(6)]
    records = [dict(path=str(p), label='normal' if i % 2 else 'covid', patient_id=str(i), source='pacs', split=None)
               for i, p in enumerate(films)]
    build_dataset(records, tmp_path / 'out', fractions=(0.34, 0.33, 0.33))  # a patient of each class per split
    rows = [row for split in load_prepared(tmp_path / 'out').values() for row in split]
    assert len(rows) == 6 and all(row['image'].format == 'PNG' and row['image'].mode == 'I;16' for row in rows)
    for row in rows:
        expected = read_image(tmp_path / row['file_name'])  # the original file's name is kept
        np.testing.assert_allclose(image_to_array(row['image']), expected, atol=1 / 65535)


def test_an_output_that_holds_the_images_it_is_built_from_is_refused(tmp_path):
    from magsd_timm.errors import BadInputError

    output = tmp_path / 'out'
    records = []
    for record in sample_records():
        copy = output / 'images' / Path(record['path']).name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(record['path'], copy)
        records.append(dict(record, path=str(copy)))
    with pytest.raises(BadInputError, match='holds the input'):
        build_dataset(records, output, overwrite=True)
    assert len(list((output / 'images').iterdir())) == 16


def _raw_rows(out: Path) -> list:
    """Every stored row with its image as the bytes the dataset holds."""
    prepared = load_prepared(out)
    return [row for split in prepared.values() for row in split.cast_column('image', datasets.Image(decode=False))]


def test_each_file_is_read_once_and_the_bytes_checked_are_the_bytes_hashed_and_stored(tmp_path, monkeypatch):
    import hashlib
    from collections import Counter

    from magsd_timm.data import build, reader

    records = []
    for record in sample_records():
        copy = tmp_path / 'films' / Path(record['path']).name
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(record['path'], copy)
        records.append(dict(record, path=str(copy)))
    first = {Path(r['path']).name: Path(r['path']).read_bytes() for r in records}
    reads = Counter()

    def read_then_replaced(path):  # another film takes the file's place the moment it was read
        data = reader.read_file_bytes(path)
        reads[Path(path).name] += 1
        Path(path).write_bytes(first['NORMAL2-IM-1427-0001.jpeg'] if reads[Path(path).name] == 1 else b'')
        return data
    monkeypatch.setattr(build, 'read_file_bytes', read_then_replaced)
    build_dataset(records, tmp_path / 'out', fractions=(0.5, 0.25, 0.25))
    assert set(reads.values()) == {1} and len(reads) == 16
    rows = _raw_rows(tmp_path / 'out')
    assert len(rows) == 16
    for row in rows:  # what was checked is what is stored, and its sha256 says so
        assert row['image']['bytes'] == first[row['file_name']]
        assert row['sha256'] == hashlib.sha256(row['image']['bytes']).hexdigest()


def test_a_file_that_vanishes_or_is_no_regular_file_is_listed_and_the_build_goes_on(tmp_path):
    import os

    records = sample_records()
    os.mkfifo(tmp_path / 'pipe.png')
    extra = [dict(path=str(tmp_path / name), label='normal', patient_id=None, source='zz', split=None)
             for name in ('pipe.png', 'gone.png')]
    build_dataset(records + extra, tmp_path / 'out')
    skipped = {Path(s['path']).name: s['reason'] for s in json.loads((tmp_path / 'out' / 'skipped.json').read_text())}
    assert 'a named pipe (FIFO)' in skipped['pipe.png'] and 'no such file' in skipped['gone.png']
    assert len(_raw_rows(tmp_path / 'out')) == 16


def test_images_that_cannot_be_radiographs_are_left_out_and_listed_with_the_reason(tmp_path):
    from PIL import Image

    Image.new('L', (256, 256), 255).save(tmp_path / 'white.png')
    extra = [dict(path=str(tmp_path / 'white.png'), label='normal', patient_id=None, source='zz', split=None)]
    build_dataset(sample_records() + extra, tmp_path / 'out')
    skipped = json.loads((tmp_path / 'out' / 'skipped.json').read_text())
    assert [s['reason'] for s in skipped if 'white.png' in s['path']][0].endswith('not a radiograph.')


def test_a_dataset_nobody_can_train_and_test_on_is_refused_and_nothing_written(tmp_path):
    from magsd_timm.errors import BadInputError

    (tmp_path / 'a.png').write_text('not an image')
    (tmp_path / 'b.png').write_bytes(b'')
    unreadable = [dict(path=str(tmp_path / n), label=n, patient_id=None, source='zz', split=None) for n in 'ab']
    with pytest.raises(BadInputError, match=r'none of the 2 image\(s\) could be read as a radiograph: .*a.png: not an '
                                            r'image file .* \(and 1 more'):
        build_dataset([dict(r, path=str(tmp_path / f'{r["label"]}.png')) for r in unreadable], tmp_path / 'out')
    normal = [r for r in sample_records() if r['label'] == 'normal']
    with pytest.raises(BadInputError, match=r'one class \(normal\): a classifier needs images of at least two'):
        build_dataset(normal, tmp_path / 'out')
    with pytest.raises(BadInputError, match='the validation split is empty'):
        build_dataset(sample_records()[6:10], tmp_path / 'out')
    assert not (tmp_path / 'out').exists()
    build_dataset(sample_records(), tmp_path / 'out', fractions=(0.85, 0., 0.15))  # no validation split, as asked


def test_a_manifests_split_column_is_honoured_or_refused_by_name(tmp_path):
    from magsd_timm.errors import BadInputError

    patients = sorted({r['patient_id'] for r in sample_records()})  # a patient's films share a split
    records = [dict(r, split=('test', 'validation', 'train', 'train')[patients.index(r['patient_id']) % 4])
               for r in sample_records()]
    summary = build_dataset(records, tmp_path / 'out', given_splits=True)
    assert summary['counts'] == {s: sum(r['split'] == s for r in records) for s in ('train', 'validation', 'test')}
    stored = {row['file_name']: split for split, rows in load_prepared(tmp_path / 'out').items() for row in rows}
    assert stored == {Path(r['path']).name: r['split'] for r in records}
    with pytest.raises(BadInputError, match='the validation split is empty'):
        build_dataset([dict(r, split='train') for r in records], tmp_path / 'all-train', given_splits=True)
    with pytest.raises(BadInputError, match='has none: give every image its split'):
        build_dataset(records[:-1] + [dict(records[-1], split=None)], tmp_path / 'partial', given_splits=True)
