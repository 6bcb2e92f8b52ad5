"""CXR preprocessing: resize, CLAHE as published, normalisations, augmentation blocks, data config."""
import cv2
import numpy as np
import pytest
import timm
import torch
from torchvision.transforms import v2

import magsd_timm  # noqa: F401  (registers the models)
from magsd_timm.data.reader import read_image
from magsd_timm.data.sample import sample_records
from magsd_timm.data.transforms import Clahe, ColumnZScore, ToTensor, augmentation, build_transforms, resolve_cxr_data_config

IMAGE = read_image(sample_records()[0]['path'])  # a real 8-bit radiograph, 1336x1000 or so


def _config(**overrides):
    return resolve_cxr_data_config(timm.create_model('magsd_resnet18', device='meta'), **overrides)


def test_data_config_resolves_from_the_model_like_timm():
    config = _config()
    assert config['input_size'] == (1, 224, 224)
    assert config['mean'] == (0.449,) and config['std'] == (0.226,)
    assert config['clahe'] and config['normalization'] == 'dataset'
    assert _config(img_size=320, normalization='column')['input_size'] == (1, 320, 320)
    assert resolve_cxr_data_config()['input_size'][0] == 1
    with pytest.raises(ValueError, match="Unknown normalization 'minmax'"):
        _config(normalization='minmax')


def test_clahe_is_opencv_s_on_8_bits_with_the_published_settings():
    low_contrast = (0.4 + 0.2 * np.random.default_rng(0).random((64, 64))).astype(np.float32)
    out = Clahe()(ToTensor()(low_contrast))
    expected = cv2.createCLAHE(clipLimit=4.0, tileGridSize=(4, 4)).apply(np.round(low_contrast * 255).astype(np.uint8))
    np.testing.assert_array_equal((out[0] * 255).round().numpy().astype(np.uint8), expected)
    assert out.std() > torch.from_numpy(low_contrast).std()


def test_column_z_score_centres_and_scales_every_column():
    out = ColumnZScore()(torch.rand(1, 50, 30))
    torch.testing.assert_close(out.mean(dim=-2), torch.zeros(1, 30), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=-2), torch.ones(1, 30), atol=1e-4, rtol=0)


def test_evaluation_is_deterministic_resize_clahe_normalise():
    transform = build_transforms(_config(), train=False, augment='published')
    first, second = transform(IMAGE), transform(IMAGE)
    assert first.shape == (1, 224, 224) and torch.equal(first, second)
    resized = v2.Resize((224, 224), antialias=True)(ToTensor()(IMAGE))  # aspect not kept
    torch.testing.assert_close(first, (Clahe()(resized) - 0.449) / 0.226)


def test_column_normalisation_replaces_the_dataset_statistics():
    out = build_transforms(_config(normalization='column'))(IMAGE)
    torch.testing.assert_close(out.mean(dim=-2), torch.zeros(1, 224), atol=1e-5, rtol=0)


@pytest.mark.parametrize('kind', ['published', 'mild'])
def test_training_augmentation_is_random_but_seeded(kind):
    transform = build_transforms(_config(), train=True, augment=kind)
    torch.manual_seed(0)
    a = [transform(IMAGE) for _ in range(6)]
    torch.manual_seed(0)
    b = [transform(IMAGE) for _ in range(6)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(x.shape == (1, 224, 224) for x in a)
    evaluation = build_transforms(_config())(IMAGE)
    assert any(not torch.equal(x, evaluation) for x in a)


def test_published_block_holds_the_published_steps():
    block = augmentation('published', (224, 224))
    assert isinstance(block, v2.RandomApply) and block.p == 0.5
    kinds = [type(t).__name__ for t in block.transforms]
    assert kinds == ['ColorJitter', 'RandomRotation', 'RandomResizedCrop', 'RandomHorizontalFlip', 'RandomVerticalFlip']
    jitter, rotation, crop = block.transforms[:3]
    assert jitter.brightness == (0.5, 1.5) and jitter.contrast == pytest.approx((0.3, 1.7))
    assert rotation.degrees == [-120.0, 120.0]
    assert crop.scale == (0.6, 1.0)


def test_unknown_augmentation_is_refused():
    with pytest.raises(ValueError, match="'heavy' is not an augmentation block: start with one of published, mild, none"):
        build_transforms(_config(), train=True, augment='heavy')


@pytest.mark.parametrize('name, kwargs', [('magsd_resnet18', {}), ('magsd_custom', dict(backbone='test_resnet'))])
def test_timms_own_data_pipeline_gives_the_trainers_input_up_to_clahe(name, kwargs):
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(name, **kwargs)
    timm_config = resolve_data_config(model=model)
    assert timm_config['crop_mode'] == 'squash' and timm_config['crop_pct'] == 1.0  # the whole film, no crop
    timm_transform = create_transform(**timm_config)
    ours = build_transforms(resolve_cxr_data_config(model, clahe=False))
    path = next(r['path'] for r in sample_records() if 'NORMAL2-IM-1427' in r['path'])  # 1776 x 1416: not square
    with Image.open(path) as image:
        assert image.width != image.height
        theirs = timm_transform(image.convert('L'))
    mine = ours(read_image(path))
    assert theirs.shape == mine.shape == (1, *timm_config['input_size'][1:])
    # both resize the whole film with antialiased bilinear interpolation; PIL rounds to 8 bits on the way
    assert (theirs - mine).abs().mean() < 0.01
    assert torch.corrcoef(torch.stack([theirs.flatten(), mine.flatten()]))[0, 1] > 0.999
    timm_transform.transforms.insert(3, Clahe())  # after MaybeToTensor, before Normalize: the trainer's whole input
    with Image.open(path) as image:
        theirs = timm_transform(image.convert('L'))
    assert (theirs - build_transforms(resolve_cxr_data_config(model))(read_image(path))).abs().mean() < 0.02


def test_create_transform_is_the_trainers_evaluation_transform_for_a_pil_image_of_any_mode(trained_run):
    import yaml
    from PIL import Image

    from magsd_timm import load
    from magsd_timm.data import create_transform

    recorded = yaml.safe_load((trained_run / 'args.yaml').read_text())
    structure = timm.create_model(recorded['model'], **recorded['model_kwargs'])
    trainers = build_transforms(resolve_cxr_data_config(structure, img_size=recorded['img_size']))  # as train.py does
    transform = create_transform(load(str(trained_run)))
    path = sample_records()[0]['path']
    expected = trainers(read_image(path))
    assert expected.shape == (1, recorded['img_size'], recorded['img_size'])
    with Image.open(path) as image:
        for mode in ('L', 'RGB', 'RGBA'):  # timm's datasets give RGB: made grey, CLAHE'd, normalised alike
            assert torch.equal(transform(image.convert(mode)), expected), mode
    assert torch.equal(transform(read_image(path)), expected)  # what read_image gives too
