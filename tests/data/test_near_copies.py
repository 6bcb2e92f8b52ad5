"""Near-copies: the same film resized, re-encoded, cropped or with other contrast is found; distinct films are not."""
import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magsd_timm.data.build import build_dataset, load_prepared
from magsd_timm.data.near_copies import COPY_KINDS, NoStructureError, fingerprint, near_copy_groups, near_copy_pairs
from magsd_timm.data.reader import image_to_array
from magsd_timm.data.sample import sample_records
from magsd_timm.data.splits import drop_near_copies


def _films():
    return [Image.open(r['path']).convert('L') for r in sample_records()]


def _print(image: Image.Image):
    return fingerprint(image_to_array(image))


@pytest.mark.parametrize('made', COPY_KINDS)
def test_a_made_copy_is_found_and_distinct_films_are_not(made):
    films = _films()[:8]
    copy = COPY_KINDS[made](films[3])
    pairs = near_copy_pairs([_print(f) for f in films] + [_print(copy)])
    assert set(pairs) == {(3, 8)}  # the copy and its film, and no two of the bundled films


def test_distinct_films_of_one_class_are_never_near_copies():
    films = _films()  # 16 radiographs: 8 normal children, 8 with pneumonia, 2 of one patient
    assert near_copy_pairs([_print(f) for f in films]) == {}


def test_a_uniform_image_cannot_be_compared():
    with pytest.raises(NoStructureError):
        fingerprint(np.full((64, 64), 0.4, dtype=np.float32))


def test_groups_join_chains_of_pairs_into_one_film():
    assert near_copy_groups(6, [(0, 3), (3, 5), (1, 2)]) == [[0, 3, 5], [1, 2]]
    assert near_copy_groups(3, []) == []


def _records(tmp_path, films, label='normal', patient=True):
    out = []
    for n, (source, image) in enumerate(films):
        path = tmp_path / source / f'{n}.png'
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        out.append(dict(path=str(path), label=label, patient_id=f'p{n}' if patient else None, source=source, split=None))
    return out


def test_the_copy_kept_has_a_patient_id_then_the_most_pixels(tmp_path):
    film = _films()[0]
    records = _records(tmp_path, [('small', film.resize((100, 100))), ('large', film.resize((200, 200)))])
    records[1]['patient_id'] = None
    records.append(_records(tmp_path / 'x', [('larger', film.resize((240, 240)))])[0])
    prints = {r['path']: fingerprint(image_to_array(Image.open(r['path']))) for r in records}
    kept, dropped, conflicts, near = drop_near_copies(records, prints)
    assert [r['source'] for r in kept] == ['larger'] and not conflicts  # both named patients; more pixels wins
    records[2]['patient_id'] = None
    kept, dropped, _, near = drop_near_copies(records, prints)
    assert [r['source'] for r in kept] == ['small']  # the only one with a patient id
    assert sorted(c.dropped['source'] for c in near) == ['large', 'larger'] and all(c.score >= .85 for c in near)
    assert all(why.startswith('near copy of ') and 'similarity' in why for _, why in dropped)


def test_near_copies_with_different_labels_are_all_left_out(tmp_path):
    film = _films()[0]
    records = (_records(tmp_path, [('a', film)], label='normal')
               + _records(tmp_path / 'b', [('b', COPY_KINDS['JPEG quality 30'](film))], label='COVID-19'))
    prints = {r['path']: fingerprint(image_to_array(Image.open(r['path']))) for r in records}
    kept, dropped, conflicts, near = drop_near_copies(records, prints)
    assert kept == [] == dropped == near and len(conflicts) == 2
    assert all(why.startswith('label conflict') for _, why in conflicts)


def test_no_near_copy_crosses_splits_and_the_card_counts_them_per_pair_of_sources(tmp_path):
    films = _films()
    originals = [dict(r, patient_id=f'p{n}') for n, r in enumerate(sample_records())]
    copies = _records(tmp_path, [('mirror site', COPY_KINDS[kind](films[n]))
                                 for n, kind in zip(range(0, 16, 2), COPY_KINDS)], patient=False)
    for copy, n in zip(copies, range(0, 16, 2)):
        copy['label'] = originals[n]['label']
    summary = build_dataset(originals + copies, tmp_path / 'out', seed=1)
    assert summary['near_copies'] == 8 and sum(summary['counts'].values()) == 16
    dataset = load_prepared(tmp_path / 'out')
    kept = [(split, image.convert('L')) for split, d in dataset.items() for image in d['image']]
    pairs = near_copy_pairs([_print(image) for _, image in kept])
    assert not any(kept[i][0] != kept[j][0] for i, j in pairs)  # none across splits (nor within: one copy kept)
    assert pairs == {}
    skipped = {Path(s['path']).parent.name: s['reason'] for s in json.loads((tmp_path / 'out' / 'skipped.json').read_text())}
    assert skipped['mirror site'].startswith('near copy of ')
    card = (tmp_path / 'out' / 'README.md').read_text()
    assert '8 near-copies' in card and '| kermany16 | mirror site | 8 |' in card


def test_every_pair_of_sources_is_compared(tmp_path):
    films = _films()
    records = _records(tmp_path, [(name, COPY_KINDS['half size'](films[0])) for name in ('a', 'b', 'c')])
    prints = {r['path']: fingerprint(image_to_array(Image.open(r['path']))) for r in records}
    assert set(near_copy_pairs([prints[r['path']] for r in records])) == set(combinations(range(3), 2))
