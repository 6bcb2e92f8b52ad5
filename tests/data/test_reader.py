"""read_image: every supported file kind becomes float (H, W) in [0, 1]; bad files are named with a reason."""
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless

from magsd_timm.data.reader import ImageReadError, read_image
from magsd_timm.data.sample import sample_records
from support.dicom_files import write_dicom
from support.image_files import bomb_png

REAL = [Path(r['path']) for r in sample_records()]


def _ramp(h=40, w=50) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % 256).astype(np.uint8)


def test_real_8_bit_jpeg_is_divided_by_255():
    image = read_image(REAL[0])
    expected = np.asarray(Image.open(REAL[0]), dtype=np.float32) / 255
    assert image.dtype == np.float32 and image.ndim == 2
    np.testing.assert_allclose(image, expected)


@pytest.mark.parametrize('mode', ['L', 'RGB', 'RGBA', 'P', 'LA', '1'])
def test_8_bit_modes_become_grey(tmp_path, mode):
    grey = Image.fromarray(_ramp())
    path = tmp_path / f'x_{mode}.png'
    grey.convert(mode).save(path)
    image = read_image(path)
    assert image.shape == (40, 50) and 0 <= image.min() and image.max() <= 1
    if mode in ('L', 'RGB', 'RGBA', 'LA'):
        np.testing.assert_allclose(image, _ramp() / 255., atol=1 / 255)


def test_16_bit_png_uses_its_own_range(tmp_path, gradient16):
    path = tmp_path / 'x16.png'
    Image.fromarray(gradient16).save(path)
    assert Image.open(path).mode.startswith('I')
    image = read_image(path)
    np.testing.assert_allclose(image, gradient16 / gradient16.max(), rtol=1e-6)  # 3071: its own maximum


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(_ramp(40, 60))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = tmp_path / 'rotated.jpg'
    image.save(path, exif=exif, quality=100)
    assert read_image(path).shape == (60, 40)


def test_dicom_monochrome2_16_bit_applies_rescale_and_window(tmp_path, gradient16):
    path = write_dicom(tmp_path / 'a.dcm', gradient16, RescaleSlope=2, RescaleIntercept=-1000,
                       WindowCenter=3000, WindowWidth=2000)
    image = read_image(path)
    values = gradient16.astype(np.float64) * 2 - 1000  # modality LUT
    assert image.shape == (64, 48)
    assert image[values <= 2000].max() == 0. and image[values >= 4000].min() == 1.  # window 2000..4000
    inside = (values > 2100) & (values < 3900)  # DICOM's linear window, then scaled to [0, 1]
    np.testing.assert_allclose(image[inside], (values[inside] - 2999.5) / 1999 + 0.5, atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path):
    pixels = _ramp(48, 48)
    normal = read_image(write_dicom(tmp_path / 'm2.dcm', pixels, 'MONOCHROME2'))
    inverted = read_image(write_dicom(tmp_path / 'm1.dcm', pixels, 'MONOCHROME1'))
    np.testing.assert_allclose(inverted, 1 - normal)
    np.testing.assert_allclose(normal, pixels / 255.)


def test_dicom_is_recognised_without_its_suffix(tmp_path):
    path = write_dicom(tmp_path / 'IM0001', _ramp(48, 48))
    np.testing.assert_allclose(read_image(path), _ramp(48, 48) / 255.)


@pytest.mark.parametrize('make, reason', [
    (lambda p: p.write_bytes(b''), 'empty file'),
    (lambda p: p.write_text('not an image at all'), 'not an image file'),
    (lambda p: p.write_bytes(REAL[0].read_bytes()[:5000]), 'corrupt or truncated'),
    (lambda p: Image.fromarray(_ramp(20, 50)).save(p, format='PNG'), 'under the 32 px minimum'),
    (lambda p: Image.fromarray(_ramp()).save(p, format='GIF', save_all=True,
                                            append_images=[Image.fromarray(255 - _ramp())]), '2 frames'),
])
def test_bad_files_are_named_with_the_reason(tmp_path, make, reason):
    path = tmp_path / 'bad.img'
    make(path)
    with pytest.raises(ImageReadError, match=reason) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ImageReadError, match='no such file'):
        read_image(tmp_path / 'nope.png')


def test_dicom_without_pixel_data_is_refused(tmp_path):
    with pytest.raises(ImageReadError, match='without pixel data'):
        read_image(write_dicom(tmp_path / 'empty.dcm', None))


def test_multi_frame_dicom_is_refused(tmp_path):
    frames = np.stack([_ramp(48, 48)] * 3)
    with pytest.raises(ImageReadError, match='multi-frame DICOM \\(3 frames\\)'):
        read_image(write_dicom(tmp_path / 'cine.dcm', frames))


def test_compressed_dicom_without_decoders_names_the_packages(tmp_path):
    path = write_dicom(tmp_path / 'j2k.dcm', _ramp(48, 48), transfer_syntax=JPEG2000Lossless)
    with pytest.raises(ImageReadError, match='pip install pylibjpeg'):
        read_image(path)


def test_garbage_with_a_dicom_suffix_is_an_unreadable_dicom(tmp_path):
    path = tmp_path / 'fake.dcm'
    path.write_bytes(b'\x00' * 200)
    with pytest.raises(ImageReadError, match='unreadable DICOM'):
        read_image(path)


@pytest.mark.parametrize('size', [(30_000, 30_000), (10_000, 10_000)])  # over PIL's own limit; over ours only
def test_a_decompression_bomb_is_an_image_read_error(tmp_path, size):
    path = bomb_png(tmp_path / 'bomb.png', *size)
    with pytest.raises(ImageReadError, match='bomb') as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_any_decoder_failure_is_an_image_read_error(tmp_path, monkeypatch):
    import magsd_timm.data.reader as reader

    def broken(path, *name):
        raise TypeError('decoder bug')

    monkeypatch.setattr(reader, '_read_pil', broken)
    path = tmp_path / 'x.png'
    Image.fromarray(_ramp()).save(path)
    with pytest.raises(ImageReadError, match=r'cannot be decoded \(TypeError: decoder bug\)'):
        read_image(path)


def test_a_file_name_that_is_not_utf8_is_named_printably(tmp_path):
    import os

    path = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b'/scan_\xff.png'))
    path.write_text('not an image')
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert 'scan_\\xff.png: not an image file' in str(info.value)
    str(info.value).encode('utf-8')  # the message prints anywhere


def _colourful(size=200) -> Image.Image:
    """A picture in many hues (blocks of random colours): not a radiograph."""
    blocks = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((size, size), Image.NEAREST)


def _mostly_black() -> Image.Image:
    pixels = np.zeros((200, 200), dtype=np.uint8)
    pixels[:30, :30] = np.random.default_rng(0).integers(0, 256, size=(30, 30))
    return Image.fromarray(pixels)


@pytest.mark.parametrize('make, reason', [
    (lambda: Image.new('L', (256, 256), 255), 'blank or nearly constant'),
    (lambda: Image.new('RGB', (256, 256), (90, 90, 90)), 'blank or nearly constant'),
    (lambda: Image.fromarray((120 + np.random.default_rng(0).integers(0, 5, size=(200, 200))).astype(np.uint8)),
     'blank or nearly constant'),
    (_mostly_black, 'of its pixels have one grey level'),
    (_colourful, 'a colour image'),
])
def test_an_image_that_cannot_be_a_radiograph_is_refused_with_the_reason(tmp_path, make, reason):
    path = tmp_path / 'not-a-film.png'
    make().save(path)
    with pytest.raises(ImageReadError, match=reason):
        read_image(path)


def test_a_photograph_of_a_film_tinted_one_hue_is_a_radiograph(tmp_path):
    grey = np.asarray(Image.open(REAL[0]), dtype=np.float64)
    tinted = np.stack([grey * 0.7 + 50, grey * 0.55 + 30, grey * 0.9 + 60], -1)  # purple, as photographed films are
    Image.fromarray(tinted.clip(0, 255).astype(np.uint8)).save(tmp_path / 'tinted.png')
    image = read_image(tmp_path / 'tinted.png')
    assert np.corrcoef(image.ravel(), grey.ravel())[0, 1] > 0.99


@pytest.mark.parametrize('make, reason', [
    (lambda p: os.mkfifo(p), r'a named pipe \(FIFO\), not a regular image file'),
    (lambda p: p.mkdir(), 'a folder, not an image file'),
])
def test_what_is_no_regular_file_is_named_as_such(tmp_path, make, reason):
    path = tmp_path / 'x.png'
    make(path)
    with pytest.raises(ImageReadError, match=reason):
        read_image(path)  # and never blocks on a pipe
