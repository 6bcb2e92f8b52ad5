"""Read a chest radiograph file (PNG, JPEG, DICOM) into a float image in [0, 1], one channel.

* 8-bit images are divided by 255; images of more bits (16-bit PNG or TIFF, 32-bit integer or
  float) are scaled from their own minimum and maximum, since the bits a detector really uses vary
  (10 to 16 in a 16-bit container). Colour, palette and alpha images become grey (ITU-R 601 luma;
  alpha is ignored). EXIF orientation is applied.
* DICOM: the modality LUT (rescale slope and intercept), then the VOI LUT or window from the file
  (pydicom's apply_voi_lut), then min-max scaling; MONOCHROME1 (white = low values) is inverted.
  Multi-frame files are refused. Compressed transfer syntaxes decode when pydicom's optional decoder
  packages are installed; otherwise the error names them.

Every failure raises ImageReadError with the file (its name printable whatever bytes it holds) and
the reason: a decoder's own exceptions, decompression bombs (images of more than MAX_PIXELS pixels)
and memory errors included, so one bad file never stops a batch of good ones.
"""
import io
from pathlib import Path
from typing import BinaryIO, Callable, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BadInputError, display

__all__ = ['ImageReadError', 'MAX_PIXELS', 'MIN_SIZE', 'decode_checked', 'image_to_array', 'is_dicom', 'read_image',
           'read_image_bytes']

MIN_SIZE = 32  # pixels, the shorter side
MAX_PIXELS = 8192 * 8192  # twice the largest detector's side; below PIL's own bomb limits (89 Mpx warns)
DICOM_SUFFIXES = ('.dcm', '.dicom', '.dic')
DECODER_PACKAGES = 'pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle (or python-gdcm)'


class ImageReadError(BadInputError):
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


def _too_large(name: str, width: int, height: int) -> ImageReadError:
    return ImageReadError(f'{name}: {width}x{height} px is over the {MAX_PIXELS:,} pixel limit '
                          '(a decompression bomb, or not a radiograph).')


def _read_pil(source: Union[Path, BinaryIO], name: str) -> np.ndarray:
    """Decode a file or an in-memory image with PIL, its size checked against MAX_PIXELS before any decoding."""
    try:
        with Image.open(source) as image:
            if image.width * image.height > MAX_PIXELS:
                raise _too_large(name, image.width, image.height)
            if getattr(image, 'n_frames', 1) > 1:
                raise ImageReadError(f'{name}: has {image.n_frames} frames; one radiograph per file is expected.')
            image.load()  # decodes now, so a truncated file fails here
            image = ImageOps.exif_transpose(image)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(f'{name}: {e}') from e
    except UnidentifiedImageError as e:
        raise ImageReadError(f'{name}: not an image file PIL can read (PNG, JPEG, ...) nor DICOM.') from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f'{name}: corrupt or truncated image ({e}).') from e
    return image_to_array(image)


def read_image_bytes(data: bytes, name: str) -> np.ndarray:
    """Read an image held in memory (a dataset's embedded PNG or JPEG) as read_image reads a file."""
    if not data:
        raise ImageReadError(f'{name}: empty image.')
    return decode_checked(name, lambda: _read_pil(io.BytesIO(data), name))


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
        raise ImageReadError(f'{display(path)}: unreadable DICOM ({e}).') from e
    if 'PixelData' not in ds:
        raise ImageReadError(f'{display(path)}: DICOM without pixel data (no PixelData element).')
    frames = int(ds.get('NumberOfFrames', 1) or 1)
    if frames > 1:
        raise ImageReadError(f'{display(path)}: multi-frame DICOM ({frames} frames); one radiograph per file is '
                             'expected.')
    rows, columns = int(ds.get('Rows', 0) or 0), int(ds.get('Columns', 0) or 0)
    if rows * columns > MAX_PIXELS:
        raise _too_large(display(path), columns, rows)
    syntax = getattr(getattr(ds, 'file_meta', None), 'TransferSyntaxUID', None)
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as e:
        name = getattr(syntax, 'name', syntax)
        raise ImageReadError(
            f'{display(path)}: cannot decode DICOM transfer syntax {name!r}; install the decoders: '
            f'pip install {DECODER_PACKAGES} ({e}).') from e
    except (ValueError, AttributeError, KeyError, TypeError) as e:
        raise ImageReadError(f'{display(path)}: DICOM pixel data does not match its header ({e}).') from e
    photometric = str(ds.get('PhotometricInterpretation', 'MONOCHROME2')).upper()
    if photometric in ('RGB', 'YBR_FULL', 'YBR_FULL_422') or pixels.ndim == 3:
        raise ImageReadError(f'{display(path)}: colour DICOM ({photometric}); a grey radiograph is expected.')
    pixels = apply_voi_lut(apply_modality_lut(pixels, ds), ds)
    image = _scaled(pixels)
    return 1. - image if photometric == 'MONOCHROME1' else image


def read_image(path: Union[str, Path]) -> np.ndarray:
    """Read a radiograph (PNG, JPEG, TIFF, DICOM) as float32 (H, W) in [0, 1]; ImageReadError on bad input."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f'{display(path)}: no such file.')
    if path.stat().st_size == 0:
        raise ImageReadError(f'{display(path)}: empty file.')
    return decode_checked(display(path), lambda: _read_dicom(path) if is_dicom(path) else _read_pil(path, display(path)))


def decode_checked(name: str, decode: Callable[[], np.ndarray]) -> np.ndarray:
    """Run a decoder on untrusted bytes and check its image as every radiograph is checked.

    Whatever the decoder raises, an image under MIN_SIZE or with non-finite pixels: an ImageReadError
    naming `name` (a file, or an image embedded in a dataset).
    """
    try:
        image = decode()
    except ImageReadError:
        raise
    except MemoryError as e:
        raise ImageReadError(f'{name}: too large to decode in the memory available.') from e
    except Exception as e:  # noqa: BLE001 - a decoder's failure on one file must not stop the others
        raise ImageReadError(f'{name}: cannot be decoded ({type(e).__name__}: {e}).') from e
    if min(image.shape) < MIN_SIZE:
        raise ImageReadError(f'{name}: {image.shape[1]}x{image.shape[0]} px is under the {MIN_SIZE} px minimum.')
    if not np.isfinite(image).all():
        raise ImageReadError(f'{name}: pixel values are not finite.')
    return image
