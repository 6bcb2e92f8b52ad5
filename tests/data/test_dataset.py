"""open_dataset: every source the recipes accept gives (image, label) pairs for a split."""
import shutil
from pathlib import Path

import pytest
import torch

from magsd_timm.data.build import build_dataset
from magsd_timm.data.dataset import CXRDataset, open_dataset
from magsd_timm.data.sample import sample_records
from magsd_timm.data.transforms import build_transforms, resolve_cxr_data_config

TRANSFORM = build_transforms(resolve_cxr_data_config(input_size=(1, 64, 64)))


def _all_splits(source):
    return {split: open_dataset(source, split, TRANSFORM) for split in ('train', 'validation', 'test')}


def test_bundled_sample_is_split_by_patient():
    splits = _all_splits(None)
    assert sum(len(d) for d in splits.values()) == 16
    image, label = splits['train'][0]
    assert image.shape == (1, 64, 64) and label in (0, 1)
    assert splits['train'].class_names == ['bacterial pneumonia', 'normal']


def test_the_bundled_folder_given_by_its_path_is_the_bundled_sample_with_its_labels():
    from magsd_timm.data.sample import sample_dir

    for split in ('train', 'validation', 'test'):  # `magsd evaluate RUN magsd_timm/data/bundled/kermany16`
        by_path, bundled = open_dataset(sample_dir(), split), open_dataset(None, split)
        assert by_path.class_names == bundled.class_names == ['bacterial pneumonia', 'normal']
        assert by_path.items == bundled.items  # the same films, labelled from their names as the trainer reads them


def test_prepared_dataset_folder_gives_its_own_splits(tmp_path):
    build_dataset(sample_records(), tmp_path / 'prepared', seed=1)
    splits = _all_splits(str(tmp_path / 'prepared'))
    assert sum(len(d) for d in splits.values()) == 16
    image, label = splits['test'][0]
    assert image.shape == (1, 64, 64) and isinstance(label, int)
    files = splits['test']
    direct = open_dataset(None, 'test')  # same images decode the same way from files and from the dataset
    assert files.image(0).dtype == direct.image(0).dtype


def test_folder_tree_and_manifest(tmp_path):
    for record in sample_records():
        target = tmp_path / 'tree' / record['label'] / Path(record['path']).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(record['path'], target)
    assert sum(len(d) for d in _all_splits(str(tmp_path / 'tree')).values()) == 16
    manifest = tmp_path / 'm.csv'
    manifest.write_text('path,label,split\n' + ''.join(
        f"{r['path']},{r['label']},{'train' if i % 4 else 'test'}\n" for i, r in enumerate(sample_records())))
    assert len(open_dataset(str(manifest), 'test')) == 4 and len(open_dataset(str(manifest), 'train')) == 12


def test_bad_sources_and_splits_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match='no such data source'):
        open_dataset(str(tmp_path / 'nothing'), 'train')
    with pytest.raises(ValueError, match="Unknown split 'val'"):
        open_dataset(None, 'val')


def test_untransformed_items_are_one_channel_tensors():
    image, _ = open_dataset(None, 'train')[0]
    assert image.ndim == 3 and image.shape[0] == 1 and image.dtype == torch.float32


def test_balanced_sampler_draws_classes_equally_and_repeats_per_epoch():
    from collections import Counter

    from magsd_timm.data.dataset import BalancedSampler
    labels = [0] * 90 + [1] * 10
    sampler = BalancedSampler(labels, seed=1)
    draws = list(sampler)
    assert len(draws) == 100
    share = Counter(labels[i] for i in draws)[1] / 100
    assert 0.35 < share < 0.65  # about half, against 10% in the data
    assert list(sampler) == draws
    sampler.set_epoch(1)
    assert list(sampler) != draws


def test_class_source_draws_balance_the_sources_within_each_class():
    from magsd_timm.data.dataset import BalancedSampler
    # class 0: 80 from a, 10 from b; class 1: 10 from a alone
    groups = [(0, 'a')] * 80 + [(0, 'b')] * 10 + [(1, 'a')] * 10
    sampler = BalancedSampler(groups, seed=0)
    weights = sampler.weights / sampler.weights.sum()
    share = {g: float(sum(w for w, x in zip(weights, groups) if x == g)) for g in set(groups)}
    assert share == {(0, 'a'): pytest.approx(.25), (0, 'b'): pytest.approx(.25), (1, 'a'): pytest.approx(.5)}
    assert len(list(sampler)) == 100


def test_a_split_without_a_source_and_of_a_source_alone():
    records = [dict(path=f'x{i}.png', label='normal', patient_id=None, source='ab'[i % 2]) for i in range(6)]
    dataset = CXRDataset(records, ['normal'])
    dataset.dropped = [('gone.png', 'unreadable')]
    without = dataset.without_sources(['a'])
    assert without.column('source') == ['b'] * 3 and without.dropped == dataset.dropped
    assert dataset.of_sources(['a']).column('path') == ['x0.png', 'x2.png', 'x4.png']
    assert len(dataset.without_sources(['a', 'b'])) == 0 and len(dataset.of_sources(['c'])) == 0


def test_dataset_labels_list_every_item():
    dataset = open_dataset(None, 'train')
    assert dataset.labels() == [dataset.label(i) for i in range(len(dataset))]


def test_images_inside_a_prepared_dataset_are_bounded_like_files(tmp_path, monkeypatch):
    import magsd_timm.data.reader as reader
    from magsd_timm.data.reader import ImageReadError

    build_dataset(sample_records(), tmp_path / 'prepared', seed=1)
    dataset = open_dataset(str(tmp_path / 'prepared'), 'train', TRANSFORM)
    assert dataset[0][0].shape == (1, 64, 64)
    monkeypatch.setattr(reader, 'MAX_PIXELS', 1000)  # every sample image is over it now
    with pytest.raises(ImageReadError, match=r'px is over the 1,000 pixel limit'):
        dataset[0]
    checked, unreadable = dataset.readable()
    assert len(checked) == 0 and len(checked.dropped) == len(unreadable) == len(dataset)


@pytest.mark.parametrize('clahe', [True, False])
def test_kept_preprocessing_gives_the_same_items_without_decoding_again(tmp_path, monkeypatch, clahe):
    import magsd_timm.data.dataset as dataset_module

    config = resolve_cxr_data_config(input_size=(1, 48, 48), clahe=clahe)
    train = build_transforms(config, train=True)
    sample = open_dataset(None, 'train')
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'not a png')
    records = [sample.items[0], dict(sample.items[0], path=str(broken)), *sample.items[1:]]  # kept ones stay aligned
    fresh = dataset_module.CXRDataset(records, sample.class_names, train, seed=3).readable()[0]
    kept, dropped = dataset_module.CXRDataset(records, sample.class_names, train, seed=3).readable(keep=True)
    assert [why for why in dropped if 'broken.png' in why[0]] and len(kept) == len(fresh)
    assert kept.kept[0].dtype == (torch.uint8 if clahe else torch.float32)  # CLAHE's 256 levels, kept in 8 bits
    reads = []
    monkeypatch.setattr(dataset_module, 'read_image', lambda path: reads.append(path))
    for epoch in range(2):  # the random augmentation still differs per epoch, and equals the uncached item's
        fresh.set_epoch(epoch), kept.set_epoch(epoch)
        monkeypatch.undo()
        expected = [fresh[i] for i in range(len(fresh))]
        monkeypatch.setattr(dataset_module, 'read_image', lambda path: reads.append(path))
        for i, (image, label) in enumerate(expected):
            assert torch.equal(kept[i][0], image) and kept[i][1] == label
    assert reads == []  # every epoch ran from the kept images


def test_an_image_that_read_well_when_checked_and_fails_later_is_the_machines_failure(tmp_path):
    from magsd_timm.cli.console import exit_code
    from magsd_timm.data.dataset import ImageChangedError
    from magsd_timm.data.reader import ImageReadError
    from magsd_timm.data.sample import sample_dir

    shutil.copytree(sample_dir(), tmp_path / 'films')
    dataset, problems = open_dataset(tmp_path / 'films', 'train').readable()
    assert problems == []
    Path(dataset.items[0]['path']).unlink()  # deleted while a run goes on (no cached images)
    with pytest.raises(ImageChangedError, match='no such file. It read well when the run started') as failure:
        dataset[0]
    assert exit_code(failure.value) == 1  # not the input's fault: exit 1, not 2
    with pytest.raises(ImageReadError, match='no such file') as unchecked:  # a plain read: a bad input, as before
        dataset.image(0)
    assert exit_code(unchecked.value) == 2
