"""Synthetic lesion images: seeded, the class only inside the box."""
import pytest
import torch

from magsd_timm.data.synthetic import LESION_PATTERNS, lesion_images


def test_images_are_a_function_of_the_seed():
    first, again, other = lesion_images(8, seed=3), lesion_images(8, seed=3), lesion_images(8, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_boxes_hold_the_lesion_and_lie_inside_the_image():
    images, labels, boxes = lesion_images(64, size=48, num_classes=4, lesion=10, seed=0)
    assert images.shape == (64, 1, 48, 48) and images.min() >= 0 and images.max() <= 1
    assert set(labels.tolist()) == {0, 1, 2, 3}
    assert ((boxes[:, 2:] - boxes[:, :2]) == 10).all() and (boxes >= 0).all() and (boxes <= 48).all()
    background, _, _ = lesion_images(64, size=48, num_classes=4, lesion=10, seed=0, contrast=0.)
    changed = (images - background).abs() > 1e-6
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        inside = torch.zeros(48, 48, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert changed[i, 0][inside].any() and not changed[i, 0][~inside].any()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=f'1 to {len(LESION_PATTERNS)}'):
        lesion_images(2, num_classes=9)
    with pytest.raises(ValueError, match='lesion size'):
        lesion_images(2, size=16, lesion=16)
