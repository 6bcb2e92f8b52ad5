"""Read a chest radiograph file (PNG, JPEG, DICOM) into a float image in [0, 1], one channel.

* 8-bit images are divided by 255; images of more bits (16-bit PNG or TIFF, 32-bit integer or
  float) are scaled from their own minimum and maximum, since the bits a detector really uses vary
  (10 to 16 in a 16-bit container). Colour, palette and alpha images become grey (ITU-R 601 luma;
  alpha is ignored). EXIF orientation is applied.
* DICOM: the modality LUT (rescale slope and intercept), then the VOI LUT or window from the file
  (pydicom's apply_voi_lut), then min-max scaling; MONOCHROME1 (white = low values) is inverted.
  Multi-frame files are refused. Compressed transfer syntaxes decode when pydicom's optional decoder
  packages are installed; otherwise the error names them.

Every failure raises ImageReadError with the file and the reason.
"""
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ['ImageReadError', 'MIN_SIZE', 'image_to_array', 'is_dicom', 'read_image']

MIN_SIZE = 32  # pixels, the shorter side
DICOM_SUFFIXES = ('.dcm', '.dicom', '.dic')
DECODER_PACKAGES = 'pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle (or python-gdcm)'


class ImageReadError(ValueError):
    """A file that cannot be read as a radiograph; the message names the file and the reason."""


def is_dicom(path: Path) -> bool:
    """Whether a file is DICOM, by its suffix or the DICM marker after the 128-byte preamble."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with path.open('rb') as f:
        header = f.read(132)
    return len(header) == 132 and header[128:132] == b'DICM'


def _scaled(pixels: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1]; a constant image becomes zeros."""
    pixels = pixels.astype(np.float64)
    low, high = pixels.min(), pixels.max()
    if high <= low:
        return np.zeros(pixels.shape, dtype=np.float32)
    return ((pixels - low) / (high - low)).astype(np.float32)


def _read_pil(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if getattr(image, 'n_frames', 1) > 1:
                raise ImageReadError(f'{path}: has {image.n_frames} frames; one radiograph per file is expected.')
            image.load()  # decodes now, so a truncated file fails here
            image = ImageOps.exif_transpose(image)
    except ImageReadError:
        raise
    except UnidentifiedImageError as e:
        raise ImageReadError(f'{path}: not an image file PIL can read (PNG, JPEG, ...) nor DICOM.') from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f'{path}: corrupt or truncated image ({e}).') from e
    return image_to_array(image)


def image_to_array(image: Image.Image) -> np.ndarray:
    """A decoded PIL image as float32 (H, W) in [0, 1]: 8 bits / 255, more bits by their own range."""
    if image.mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F'):
        return _scaled(np.asarray(image))
    if image.mode != 'L':
        image = image.convert('L')  # '1', P, RGB, RGBA, LA, CMYK, YCbCr: luma, alpha ignored
    return np.asarray(image, dtype=np.float32) / 255.


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as e:
        raise ImageReadError(f'{path}: unreadable DICOM ({e}).') from e
    if 'PixelData' not in ds:
        raise ImageReadError(f'{path}: DICOM without pixel data (no PixelData element).')
    frames = int(ds.get('NumberOfFrames', 1) or 1)
    if frames > 1:
        raise ImageReadError(f'{path}: multi-frame DICOM ({frames} frames); one radiograph per file is expected.')
    syntax = getattr(getattr(ds, 'file_meta', None), 'TransferSyntaxUID', None)
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as e:
        name = getattr(syntax, 'name', syntax)
        raise ImageReadError(
            f'{path}: cannot decode DICOM transfer syntax {name!r}; install the decoders: '
            f'pip install {DECODER_PACKAGES} ({e}).') from e
    except (ValueError, AttributeError, KeyError, TypeError) as e:
        raise ImageReadError(f'{path}: DICOM pixel data does not match its header ({e}).') from e
    photometric = str(ds.get('PhotometricInterpretation', 'MONOCHROME2')).upper()
    if photometric in ('RGB', 'YBR_FULL', 'YBR_FULL_422') or pixels.ndim == 3:
        raise ImageReadError(f'{path}: colour DICOM ({photometric}); a grey radiograph is expected.')
    pixels = apply_voi_lut(apply_modality_lut(pixels, ds), ds)
    image = _scaled(pixels)
    return 1. - image if photometric == 'MONOCHROME1' else image


def read_image(path: Union[str, Path]) -> np.ndarray:
    """Read a radiograph (PNG, JPEG, TIFF, DICOM) as float32 (H, W) in [0, 1]; ImageReadError on bad input."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f'{path}: no such file.')
    if path.stat().st_size == 0:
        raise ImageReadError(f'{path}: empty file.')
    image = _read_dicom(path) if is_dicom(path) else _read_pil(path)
    if min(image.shape) < MIN_SIZE:
        raise ImageReadError(f'{path}: {image.shape[1]}x{image.shape[0]} px is under the {MIN_SIZE} px minimum.')
    if not np.isfinite(image).all():
        raise ImageReadError(f'{path}: pixel values are not finite.')
    return image
