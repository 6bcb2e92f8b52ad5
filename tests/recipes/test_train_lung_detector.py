"""recipes/train_lung_detector.py: boxes checked, films split by patient, scored on the held-out ones."""
import json

import numpy as np
import pytest
from PIL import Image

from magsd_timm.models.lung_detector import DETECTOR_CONFIG, load_detector
from support.recipes import recipe_runner


@pytest.fixture
def run_here(capsys):
    """recipes/train_lung_detector.py's main in this process: (exit code, stdout, stderr)."""
    return recipe_runner('train_lung_detector', capsys)


def _films(folder, count=12):
    """Films with two bright 'lungs' at seeded places, their COCO boxes (in twice the file's pixels), and three bad
    entries: a box reaching past its image, an image that is not in the folder, a recorded size of another image."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(count):
        pixels = (rng.random((48, 40)) * 60).astype(np.uint8)
        x, y, w, h = int(rng.integers(2, 8)), int(rng.integers(2, 10)), int(rng.integers(10, 14)), int(rng.integers(24, 34))
        pixels[y:y + h, x:x + w] = 220
        pixels[y:y + h, x + w + 4:x + 2 * w + 4] = 220
        Image.fromarray(pixels).save(folder / f'{i}.png')
        images.append(dict(id=i, file_name=f'{i}.png', width=80, height=96, metadata=dict(patientid=str(i // 2))))
        annotations += [dict(id=2 * i, image_id=i, bbox=[2 * x, 2 * y, 2 * w, 2 * h]),
                        dict(id=2 * i + 1, image_id=i, bbox=[2 * (x + w + 4), 2 * y, 2 * w, 2 * h])]
    annotations[1]['bbox'] = [60, 10, 40, 30]  # film 0: reaches x = 100 on an 80 px wide original
    images.append(dict(id=99, file_name='gone.png', width=80, height=96))
    annotations.append(dict(id=199, image_id=99, bbox=[1, 1, 10, 10]))
    images[5]['width'] = 200  # film 5: recorded 200 x 96, the file is 40 x 48
    boxes = folder.parent / 'boxes.json'
    boxes.write_text(json.dumps(dict(images=images, annotations=annotations)))
    return boxes


def test_a_detector_is_trained_and_scored_on_held_out_patients_and_bad_boxes_are_listed(tmp_path, run_here):
    boxes = _films(tmp_path / 'films')
    out = tmp_path / 'lungs'
    proc = run_here(out, '--boxes', boxes, '--images', tmp_path / 'films', '--architecture', 'test_resnet',
                    '--no-pretrained', '--img-size', '32', '--epochs', '2', '--batch-size', '4', '--heldout', '0.34')
    assert proc.returncode == 0, proc.stderr
    assert '3 box(es) or image(s) left out (listed in ignored.json)' in proc.stderr
    reasons = {item['item']: item['reason'] for item in json.loads((out / 'ignored.json').read_text())}
    assert reasons['0.png'].startswith('box [60.0, 10.0, 40.0, 30.0] falls outside its 80x96 image')
    assert reasons['gone.png'].startswith('the box file names an image that is not in')
    assert reasons['5.png'] == 'recorded as 200x96, but the file is 40x48: another image'
    config = json.loads((out / DETECTOR_CONFIG).read_text())
    held, trained = config['heldout'], config['trained_on']
    assert held['num_images'] + trained['num_images'] == 10 and held['num_patients'] == 2  # 6 patients, 1/3 held out
    assert 0 <= held['iou_mean'] <= 1 and 0 <= held['lung_box_kept_by_crop'] <= 1 and config['ignored'] == 3
    assert 0 < held['mean_box_iou_mean'] <= 1  # the reference a detector has to beat
    assert load_detector(out).architecture == 'test_resnet'
    again = run_here(out, '--boxes', boxes, '--images', tmp_path / 'films', '--architecture', 'test_resnet',
                     '--no-pretrained')
    assert again.returncode == 2 and 'exists' in again.stderr
