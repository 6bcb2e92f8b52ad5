"""Where a model looks, scored against boxes: masks at input size, mass inside, the pointing game, the report."""
import json
import math

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import magsd_timm  # noqa: F401
from magsd_timm.data import CXRDataset, build_transforms, resolve_cxr_data_config
from magsd_timm.errors import BadInputError
from magsd_timm.evaluation.localization import (
    box_masks,
    boxes_in_view,
    load_boxes,
    localization_report,
    mass_in_boxes,
    pointing_hits,
)
from magsd_timm.models.lung_detector import LungDetector
from support.image_files import distinct_film


def _coco(path, entries):
    """entries: (file_name, width, height, [bbox, ...])."""
    images = [dict(id=i, file_name=n, width=w, height=h) for i, (n, w, h, _) in enumerate(entries)]
    annotations = [dict(image_id=i, bbox=list(b), category_id=1) for i, (*_, bs) in enumerate(entries) for b in bs]
    path.write_text(json.dumps(dict(images=images, annotations=annotations)))
    return path


def test_boxes_scale_from_the_original_size_to_the_models_input(tmp_path):
    boxes = load_boxes(_coco(tmp_path / 'b.json', [('a.png', 100, 200, [(10, 20, 20, 20), (60, 100, 40, 100)])]))
    assert boxes == {'a.png': ((100, 200), [(10., 20., 20., 20.), (60., 100., 40., 100.)])}
    mask = box_masks([boxes['a.png']], (50, 50))[0, 0]
    # (10, 20, 20, 20) at 100 x 200 -> x 5..15, y 5..10 at 50 x 50; the second box reaches the corner
    assert mask[5:10, 5:15].all() and not mask[4, 5] and not mask[5, 15] and not mask[10, 5]
    assert mask[25:, 30:].all() and int(mask.sum()) == 5 * 10 + 25 * 20


def test_a_model_that_crops_to_the_lungs_is_scored_on_the_boxes_moved_onto_its_crop(tmp_path):
    Image.fromarray(distinct_film(0, shape=(80, 60))).save(tmp_path / 'a.png')  # a textured film of that size
    boxes = load_boxes(_coco(tmp_path / 'b.json', [('a.png', 120, 160, [(0, 0, 60, 160), (0, 0, 10, 10)])]))
    records = [dict(path=str(tmp_path / 'a.png'), label='normal')]
    whole = CXRDataset(records, ['normal'], build_transforms(resolve_cxr_data_config(img_size=32)))
    assert boxes_in_view(whole, boxes) == {0: boxes['a.png']}
    # a fresh detector answers its mean box: the middle half of the film on each side
    crop = LungDetector('test_resnet', 32, margin=0., mean_box=(0.25, 0.25, 0.75, 0.75))
    cropped = CXRDataset(records, ['normal'], build_transforms(resolve_cxr_data_config(img_size=32), crop=crop))
    # the left half of the original is the left half of the crop; the corner box is cut away
    assert boxes_in_view(cropped, boxes) == {0: ((60., 80.), [(0., 0., 30., 80.)])}
    assert cropped[0][0].shape == (1, 32, 32)


def test_mass_and_pointing_score_a_map_against_its_boxes():
    masks = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    masks[:, :, :2, :2] = True  # a quarter of the image
    maps = torch.zeros(3, 1, 4, 4)
    maps[0, 0, 0, 0] = 1.  # all inside
    maps[1] = 1.  # uniform: the box's area
    maps[1, 0, 3, 3] = 2.  # ... with its peak outside
    mass = mass_in_boxes(maps, masks)
    assert mass[0] == 1. and mass[1] == pytest.approx(4 / 17) and math.isnan(mass[2])  # an empty map has no share
    hits = pointing_hits(maps, masks)
    assert hits[:2].tolist() == [1., 0.] and math.isnan(hits[2])  # nor a peak


def test_a_file_that_is_not_coco_boxes_is_refused_by_name(tmp_path):
    (tmp_path / 'b.json').write_text('{"images": [{"id": 1}]}')
    with pytest.raises(BadInputError, match=r'b.json is not a COCO box file .*KeyError'):
        load_boxes(tmp_path / 'b.json')


@pytest.mark.parametrize('name, method', [('magsd_custom', 'evidence map: '),
                                          ('test_resnet', 'grad-cam map: Grad-CAM')])
def test_the_report_scores_ma_net_or_grad_cam_on_the_images_with_boxes(tmp_path, name, method):
    records = []
    for i in range(5):
        path = tmp_path / f'x{i}.png'
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (80, 60), dtype=np.uint8)).save(path)
        records.append(dict(path=str(path), label='normal', patient_id=str(i), source='s'))
    boxes = load_boxes(_coco(tmp_path / 'b.json', [(f'x{i}.png', 600, 800, [(0, 0, 300, 800)]) for i in range(4)]))
    kwargs = dict(backbone='test_resnet') if name == 'magsd_custom' else {}
    torch.manual_seed(0)
    model = timm.create_model(name, in_chans=1, num_classes=2, **kwargs)
    transform = build_transforms(resolve_cxr_data_config(input_size=(1, 64, 64)))
    report = localization_report(model, CXRDataset(records, ['normal', 'other'], transform), boxes, batch_size=3,
                                 replicates=50, overlays=tmp_path / 'overlays', num_overlays=2)
    assert report['method'].startswith(method) and report['num_images'] == 4  # x4 has no boxes
    assert report['map'] == method.split(' ')[0] and report['asked'] == 'evidence'
    assert report['images_without_boxes'] == 1  # counted, and scored neither way
    assert report['box_area_share'] == pytest.approx(0.5)  # the left half of every image
    assert report['empty_maps'] < 4  # a map that is zero everywhere is counted, not scored
    for key in ('mass_in_boxes', 'pointing_hit_rate'):
        low, high = report[f'{key}_interval']
        assert 0 <= low <= report[key] <= high <= 1
    assert sorted(p.name for p in (tmp_path / 'overlays').iterdir()) == ['x0.png', 'x1.png']


def test_invalid_boxes_and_images_are_left_out_and_listed_never_scored(tmp_path):
    path = tmp_path / 'boxes.json'
    path.write_text(json.dumps(dict(
        images=[dict(id=0, file_name='a.png', width=100, height=50), dict(id=1, file_name='b.png', width=0, height=50),
                dict(id=2, file_name='c.png', width='wide', height=50)],
        annotations=[dict(id=1, image_id=0, bbox=[10, 10, 20, 20]), dict(id=2, image_id=0, bbox=[10, 10, 0, 20]),
                     dict(id=3, image_id=0, bbox=[30, 10, -5, 20]), dict(id=4, image_id=0, bbox=[100, 0, 5, 5]),
                     dict(id=5, image_id=0, bbox=[-20, -20, 10, 10]), dict(id=6, image_id=0, bbox=[1, 2, 3]),
                     dict(id=7, image_id=0, bbox=[1, 'x', 3, 4]), dict(id=8, image_id=1, bbox=[1, 1, 5, 5]),
                     dict(id=9, image_id=9, bbox=[1, 1, 5, 5]), dict(id=10, image_id=0, bbox=[90, 40, 50, 50])])))
    boxes = load_boxes(path)
    assert boxes == {'a.png': ((100, 50), [(10., 10., 20., 20.), (90., 40., 50., 50.)])}  # partly off: clipped later
    assert len(boxes.invalid) == 10  # two images without a size; eight boxes (one on such an image)
    assert sum('no area' in why for why in boxes.invalid) == 2 and sum('off the' in why for why in boxes.invalid) == 2


def test_a_box_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import magsd_timm.evaluation.localization as localization

    path = _coco(tmp_path / 'boxes.json', [('a.png', 100, 100, [(0, 0, 10, 10)])])
    monkeypatch.setattr(localization, 'MAX_BOX_FILE_BYTES', path.stat().st_size - 1)
    with pytest.raises(BadInputError, match='over the 0 MiB limit of a box file'):
        load_boxes(path)


def test_the_intervals_resample_patients_as_every_interval_does(tmp_path):
    records = []
    for i in range(6):
        path = tmp_path / f'x{i}.png'
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
        records.append(dict(path=str(path), label='normal', patient_id='one patient', source='s'))
    boxes = load_boxes(_coco(tmp_path / 'b.json', [(f'x{i}.png', 64, 64, [(0, 0, 32, 64)]) for i in range(6)]))
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', in_chans=1, num_classes=2)
    transform = build_transforms(resolve_cxr_data_config(input_size=(1, 64, 64)))
    dataset = CXRDataset(records, ['normal', 'other'], transform)
    report = localization_report(model, dataset, boxes, replicates=50)
    # one patient: every resample holds all six images, so the interval is the mean itself
    assert report['mass_in_boxes_interval'] == pytest.approx([report['mass_in_boxes']] * 2)
    for record in records:
        record['patient_id'] = record['path']
    spread = localization_report(model, CXRDataset(records, ['normal', 'other'], transform), boxes, replicates=50)
    assert spread['mass_in_boxes_interval'][0] < spread['mass_in_boxes_interval'][1]  # six patients: it varies
