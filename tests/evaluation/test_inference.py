"""Inputs from paths, folders and globs; probabilities with temperature and attention TTA; per-file failures."""
from pathlib import Path

import pytest
import timm
import torch

import magsd_timm  # noqa: F401  (registers the models)
from magsd_timm.data import build_transforms, resolve_cxr_data_config
from magsd_timm.data.sample import sample_records
from magsd_timm.evaluation.inference import collect_inputs, model_logits, predict_files, probabilities


def test_inputs_come_from_files_folders_and_globs_and_misses_are_named(tmp_path):
    (tmp_path / 'a' / 'deep').mkdir(parents=True)
    for name in ('a/one.png', 'a/deep/two.DCM', 'a/notes.txt', 'three.jpeg'):
        (tmp_path / name).write_bytes(b'x')
    files, problems = collect_inputs([str(tmp_path / 'a'), str(tmp_path / '*.jpeg'), str(tmp_path / 'a' / 'one.png'),
                                      str(tmp_path / 'none.png'), str(tmp_path / '*.gif')])
    assert files == [tmp_path / 'a' / 'deep' / 'two.DCM', tmp_path / 'a' / 'one.png', tmp_path / 'three.jpeg']
    assert problems == [(str(tmp_path / 'none.png'), 'no such file or folder'),
                        (str(tmp_path / '*.gif'), 'no file matches this pattern')]


def test_collecting_inputs_compares_each_file_a_bounded_number_of_times(tmp_path, monkeypatch):
    from pathlib import PurePath

    for i in range(2000):
        (tmp_path / f'{i:04d}.png').write_bytes(b'x')
    calls = []
    equal = PurePath.__eq__
    monkeypatch.setattr(PurePath, '__eq__', lambda self, other: calls.append(1) or equal(self, other))
    files, _ = collect_inputs([str(tmp_path), str(tmp_path / '*.png')])  # every file named twice
    assert len(files) == 2000 and files == sorted(files)
    assert len(calls) < 10 * 2000  # comparing each with every other would take millions


def test_nan_or_infinite_probabilities_are_refused():
    from magsd_timm.evaluation.inference import NonFiniteOutputError

    with pytest.raises(NonFiniteOutputError, match='1 of 2 image'):
        probabilities([torch.tensor([[float('nan'), 0.], [1., 0.]])])
    with pytest.raises(NonFiniteOutputError):
        probabilities([torch.tensor([[1., 0.]])], temperature=1e-300)


def test_probabilities_divide_by_the_temperature_and_average_the_views():
    raw, crop = torch.tensor([[2., 0.]]), torch.tensor([[0., 2.]])
    assert torch.allclose(probabilities([raw], 2.0), torch.tensor([[1., 0.]]).softmax(-1))
    assert torch.allclose(probabilities([raw, crop]), torch.tensor([[0.5, 0.5]]))


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return timm.create_model('magsd_custom', backbone='test_resnet', num_maps=4, num_classes=2).eval()


def test_tta_adds_the_attention_crop_of_the_same_pass(model):
    images = torch.randn(2, 1, 64, 64)
    (raw,), attention = model_logits(model, images)
    (raw2, crop), attention2 = model_logits(model, images, tta=True)
    assert torch.equal(raw, raw2) and torch.equal(attention, attention2) and crop.shape == raw.shape
    with pytest.raises(ValueError, match='needs an MA-Net'):
        model_logits(torch.nn.Conv2d(1, 2, 1), images, tta=True)


def test_unreadable_files_are_reported_and_the_rest_predicted(model, tmp_path):
    broken = tmp_path / 'broken.png'
    broken.write_bytes(Path(sample_records()[0]['path']).read_bytes()[:200])  # a truncated JPEG
    files = [Path(sample_records()[0]['path']), broken, Path(sample_records()[1]['path'])]
    config = resolve_cxr_data_config(model, img_size=64)
    predictions, failures = predict_files(model, files, build_transforms(config), ['a', 'b'], batch_size=2,
                                          heatmap_dir=tmp_path / 'maps', data_config=config)
    assert [p.path for p in predictions] == [files[0], files[2]]
    assert failures[0][0] == str(broken) and 'broken.png' in failures[0][1]
    for p in predictions:
        assert sum(p.probabilities.values()) == pytest.approx(1.0) and p.predicted in ('a', 'b')
        assert p.heatmap.read_bytes()[:4] == b'\x89PNG'
