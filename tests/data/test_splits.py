"""Patient-level splits, folds, held-out sources and duplicate removal."""
from collections import Counter

import pytest

from magsd_timm.data.splits import (
    assign_patients,
    check_no_patient_overlap,
    deduplicate,
    patient_folds,
    patient_split,
    source_holdout,
)


def _records(n_patients=40, images_per_patient=2, labels=('a', 'b'), source='s'):
    return assign_patients([
        dict(path=f'/{source}/p{p}_{i}.png', label=labels[p % len(labels)], patient_id=f'p{p}', source=source,
             split=None)
        for p in range(n_patients) for i in range(images_per_patient)])


def _patients(records):
    return {r['patient_id'] for r in records}


def test_split_is_by_patient_stratified_and_seeded():
    records = _records()
    splits = patient_split(records, (0.5, 0.25, 0.25), seed=3)
    assert [len(_patients(splits[s])) for s in ('train', 'validation', 'test')] == [20, 10, 10]
    for split in splits.values():
        assert Counter(r['label'] for r in split)['a'] == Counter(r['label'] for r in split)['b']
    assert sum(len(s) for s in splits.values()) == len(records)
    again = patient_split(records, (0.5, 0.25, 0.25), seed=3)
    other = patient_split(records, (0.5, 0.25, 0.25), seed=4)
    assert _patients(again['test']) == _patients(splits['test']) != _patients(other['test'])


def test_unknown_patients_count_one_per_image():
    records = assign_patients([dict(path=f'/x/{i}.png', label='a', patient_id=None, source='x') for i in range(3)]
                              + [dict(path='/y/1.png', label='a', patient_id='7', source='y')])
    assert [r['patient_id_known'] for r in records] == [False, False, False, True]
    assert len(_patients(records)) == 4 and records[3]['patient_id'] == 'y/7'


def test_overlap_is_refused_with_the_patients_named():
    record = dict(path='/a.png', label='a', patient_id='s/p1', source='s')
    with pytest.raises(ValueError, match='1 patient\\(s\\) appear in more than one split: s/p1 in test, train'):
        check_no_patient_overlap({'train': [record], 'test': [dict(record, path='/b.png')]})


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match='summing to 1'):
        patient_split(_records(), (0.5, 0.5, 0.5))


def test_folds_keep_patients_together_and_balance_classes():
    records = _records(30)
    folds = patient_folds(records, 3, seed=0)
    by_patient = {}
    for record, fold in zip(records, folds):
        assert by_patient.setdefault(record['patient_id'], fold) == fold
    assert Counter(by_patient.values()) == {0: 10, 1: 10, 2: 10}
    with pytest.raises(ValueError, match='k >= 2'):
        patient_folds(records, 1)


def test_source_holdout_tests_on_the_held_source():
    records = _records(6, source='a') + _records(4, source='b')
    splits = source_holdout(records, 'b')
    assert {r['source'] for r in splits['test']} == {'b'} and {r['source'] for r in splits['train']} == {'a'}
    with pytest.raises(ValueError, match="Unknown source 'c'"):
        source_holdout(records, 'c')


def test_exact_duplicates_keep_the_first_by_source_and_path(tmp_path):
    (tmp_path / 'one.png').write_bytes(b'same')
    (tmp_path / 'two.png').write_bytes(b'same')
    (tmp_path / 'three.png').write_bytes(b'other')
    records = [dict(path=str(tmp_path / n), label='a', patient_id=None, source=s)
               for n, s in (('two.png', 'b'), ('one.png', 'a'), ('three.png', 'a'))]
    kept, dropped, conflicts = deduplicate(records)
    assert conflicts == []
    assert sorted(r['path'] for r in kept) == [str(tmp_path / 'one.png'), str(tmp_path / 'three.png')]
    assert dropped[0][0]['path'] == str(tmp_path / 'two.png') and 'duplicate of' in dropped[0][1]
    assert all(len(r['sha256']) == 64 for r in kept)


def test_copies_of_one_file_with_different_labels_are_all_left_out_as_a_conflict(tmp_path):
    (tmp_path / 'n.png').write_bytes(b'same')
    (tmp_path / 'p.png').write_bytes(b'same')
    (tmp_path / 'n2.png').write_bytes(b'same')
    (tmp_path / 'other.png').write_bytes(b'other')
    records = [dict(path=str(tmp_path / n), label=label, patient_id=None, source='s')
               for n, label in (('n.png', 'normal'), ('p.png', 'pneumonia'), ('n2.png', 'normal'), ('other.png', 'normal'))]
    kept, duplicates, conflicts = deduplicate(records)
    assert [r['path'] for r in kept] == [str(tmp_path / 'other.png')] and duplicates == []
    assert sorted(r['path'] for r, _ in conflicts) == sorted(str(tmp_path / n) for n in ('n.png', 'n2.png', 'p.png'))
    assert all("labelled 'normal', 'pneumonia'" in why for _, why in conflicts)
