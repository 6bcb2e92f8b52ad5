"""Acquisition augmentations change how a film was taken, never where the anatomy is."""
import pytest
import torch

from magsd_timm.data.acquisition import ACQUISITION_STEPS, RandomBorderErase, acquisition_steps
from magsd_timm.data.transforms import augment_spec, augmentation


def _film() -> torch.Tensor:
    """A grey film whose left half is brighter: a flip or a large rotation would show."""
    film = torch.linspace(0.2, 0.4, 96)[:, None].repeat(1, 96)[None]
    film[..., :48] += 0.4
    return film


@pytest.mark.parametrize('name', sorted(ACQUISITION_STEPS))
def test_each_step_keeps_the_size_the_grey_range_and_the_sides_and_is_seeded(name):
    step = acquisition_steps([name])[0]
    film = _film()
    changed = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out = step(film)
        torch.manual_seed(seed)
        assert torch.equal(out, step(film))  # every random draw comes from torch's seeded generator
        assert out.shape == film.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
        assert out[..., 20:76, 10:40].mean() > out[..., 20:76, 56:86].mean()  # the bright side stays left
        changed += not torch.equal(out, film)
    assert changed >= 3  # it does something, some of the time


def test_hospital_is_every_step_in_a_fixed_order():
    names = [type(s).__name__ for s in acquisition_steps(['hospital'])]
    assert names == ['RandomAffine', 'RandomIntensity', 'RandomBlurSharpen', 'RandomResample', 'RandomNoise',
                     'RandomJpeg', 'RandomBorderErase']
    assert [type(s).__name__ for s in acquisition_steps(['jpeg', 'intensity'])] == ['RandomIntensity', 'RandomJpeg']


def test_border_erasing_stays_on_the_edge():
    film = _film()
    torch.manual_seed(0)
    erase = RandomBorderErase(p=1.)
    for _ in range(50):
        out = erase(film)
        inner = slice(15, 81)  # 15% of 96 from every side
        assert torch.equal(out[..., inner, inner], film[..., inner, inner])


def test_an_augmentation_is_a_block_then_steps():
    assert len(augmentation('mild+hospital', (96, 96)).transforms) == 8
    assert type(augmentation('mild', (96, 96))).__name__ == 'Compose'
    assert augment_spec('none+jpeg') == 'none+jpeg'
    for bad in ('hospital', 'mild+flip', 'mild+jpeg+jpeg', ''):
        with pytest.raises(ValueError):
            augment_spec(bad)
