"""The lung-field detector: boxes in order, crops that keep the lungs, and a folder read as untrusted."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from magsd_timm.errors import BadInputError
from magsd_timm.models.lung_detector import (
    DETECTOR_CONFIG,
    DETECTOR_WEIGHTS,
    LungDetector,
    box_iou,
    load_detector,
    save_detector,
)


def _detector(**kwargs) -> LungDetector:
    torch.manual_seed(0)
    return LungDetector('test_resnet', 32, **kwargs)


def test_iou_of_paired_boxes():
    a = torch.tensor([[0., 0., .5, .5], [0., 0., 1., 1.], [0., 0., .2, .2]])
    b = torch.tensor([[.25, .25, .75, .75], [0., 0., 1., 1.], [.5, .5, 1., 1.]])
    assert box_iou(a, b).tolist() == pytest.approx([0.0625 / (0.25 + 0.25 - 0.0625), 1., 0.])


def test_a_fresh_detector_answers_its_mean_box_for_every_film():
    detector = _detector(mean_box=(0.1, 0.2, 0.8, 0.9))
    boxes = detector.boxes([np.random.default_rng(i).random((40, 30 + i)).astype(np.float32) for i in range(3)])
    assert boxes.tolist() == [pytest.approx([0.1, 0.2, 0.8, 0.9])] * 3


def test_every_predicted_box_starts_before_it_ends_inside_the_film():
    detector = _detector()
    torch.nn.init.normal_(detector.net.get_classifier().weight, std=10.)  # outputs far past where tanh saturates
    boxes = detector.boxes([np.random.default_rng(i).random((40 + i, 30)).astype(np.float32) for i in range(5)])
    assert boxes.shape == (5, 4) and bool(((boxes >= 0) & (boxes <= 1)).all())
    assert bool((boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all())


def test_a_crop_widens_the_box_by_the_margin_keeps_a_quarter_and_stays_inside():
    detector = _detector(margin=0.05)
    assert detector.crop_box([.2, .3, .6, .7]) == pytest.approx([.15, .25, .65, .75])
    assert detector.crop_box([.5, .5, .52, .52]) == pytest.approx([.385, .385, .635, .635])  # at least 0.25 a side
    assert detector.crop_box([0., .01, 1., .99]) == pytest.approx([0., 0., 1., 1.])
    image = np.random.default_rng(0).random((60, 40)).astype(np.float32)
    left, top, right, bottom = detector.crop_box(detector.boxes([image])[0].tolist())
    assert detector.crop(image).shape == (int(np.ceil(bottom * 60)) - int(top * 60),
                                          int(np.ceil(right * 40)) - int(left * 40))


def test_a_saved_detector_loads_with_the_same_boxes(tmp_path):
    detector = _detector(margin=0.1)
    save_detector(detector, tmp_path, dict(heldout=dict(iou_mean=0.8)))
    again = load_detector(tmp_path)
    image = np.random.default_rng(1).random((50, 50)).astype(np.float32)
    assert torch.equal(detector.boxes([image]), again.boxes([image])) and again.margin == 0.1
    assert json.loads((tmp_path / DETECTOR_CONFIG).read_text())['heldout'] == {'iou_mean': 0.8}


@pytest.mark.parametrize('config, message', [
    ([1, 2], 'not a mapping'),
    (dict(architecture='os.system', img_size=32, margin=0.05), "architecture 'os.system' is not one of"),
    (dict(architecture='test_resnet', img_size=10 ** 9, margin=0.05), 'img_size 1000000000 must be'),
    (dict(architecture='test_resnet', img_size=32, margin='wide'), "margin 'wide' must be a number"),
    (dict(architecture='test_resnet', img_size=32, margin=0.05, mean_box=[0.9, 0.1, 0.2, 0.8]), 'mean_box .* must be'),
    (dict(architecture='test_resnet', img_size=32, margin=0.05, mean_box=[0, 0, 1, float('nan')]), 'mean_box .* must'),
])
def test_a_hostile_detector_config_is_refused_by_name(tmp_path, config, message):
    save_detector(_detector(), tmp_path, {})
    (tmp_path / DETECTOR_CONFIG).write_text(json.dumps(config))
    with pytest.raises(BadInputError, match=message):
        load_detector(tmp_path)


def test_weights_that_do_not_fit_or_are_not_finite_are_refused(tmp_path):
    save_detector(_detector(), tmp_path, {})
    state = {k: v.clone() for k, v in load_file(str(tmp_path / DETECTOR_WEIGHTS)).items()}
    name = next(k for k, v in state.items() if v.is_floating_point())
    save_file(dict(state, **{name: torch.full_like(state[name], float('nan'))}), str(tmp_path / DETECTOR_WEIGHTS))
    with pytest.raises(BadInputError, match=f'{name}: holds NaN or infinite values'):
        load_detector(tmp_path)
    save_file(dict(state, **{name: state[name].to(torch.int64)}), str(tmp_path / DETECTOR_WEIGHTS))
    with pytest.raises(BadInputError, match=f'{name}: torch.int64, not floating point'):  # the same shape, no numbers
        load_detector(tmp_path)
    save_file({k: v for k, v in state.items() if k != name}, str(tmp_path / DETECTOR_WEIGHTS))
    with pytest.raises(BadInputError, match=f'do not fit a test_resnet detector \\(missing from the checkpoint: {name}'):
        load_detector(tmp_path)
    (tmp_path / DETECTOR_WEIGHTS).write_bytes(b'not safetensors')
    with pytest.raises(BadInputError, match='not readable safetensors'):
        load_detector(tmp_path)


def test_a_folder_without_a_detector_names_the_recipe(tmp_path):
    with pytest.raises(BadInputError, match='train one with recipes/train_lung_detector.py'):
        load_detector(tmp_path)
