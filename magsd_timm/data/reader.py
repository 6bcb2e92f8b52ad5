"""Read a chest radiograph file (PNG, JPEG, DICOM) into a float image in [0, 1], one channel.

* 8-bit images are divided by 255; images of more bits (16-bit PNG or TIFF, 32-bit integer or
  float) are scaled from their own minimum and maximum, since the bits a detector really uses vary
  (10 to 16 in a 16-bit container). Colour, palette and alpha images become grey (ITU-R 601 luma;
  alpha is ignored). EXIF orientation is applied.
* DICOM: the modality LUT (rescale slope and intercept), then the VOI LUT or window from the file
  (pydicom's apply_voi_lut), then min-max scaling; MONOCHROME1 (white = low values) is inverted.
  Multi-frame files are refused. Compressed transfer syntaxes decode when pydicom's optional decoder
  packages are installed; otherwise the error names them.

A file is read once (``read_file_bytes``: a regular file, not a folder, pipe or device, of at most
MAX_FILE_BYTES) and those bytes are what is decoded, so that what is checked is what a caller hashes
and stores (``decode_image``).

Every decoded image is checked as a radiograph (``check_radiograph``), with cheap measures that no
radiograph fails, measured on every film of three public collections (docs/data.md): at least
MIN_SIZE px a side; finite values; not blank or nearly constant (the 1st and 99th percentiles at
least MIN_SPREAD apart); not mostly one grey level (at most MAX_ONE_LEVEL of the pixels); and for a
colour file, at most MAX_COLOURED of its pixels coloured, unless they are of one hue (a photograph
of a film, tinted: MIN_ONE_HUE of the variance on one axis of RGB). Arrows and text drawn on a film
pass.

Every failure raises ImageReadError with the file (its name printable whatever bytes it holds) and
the reason: a decoder's own exceptions, decompression bombs (images of more than MAX_PIXELS pixels)
and memory errors included, so one bad file never stops a batch of good ones.
"""
import io
import stat
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BadInputError, display

__all__ = ['ImageReadError', 'MAX_FILE_BYTES', 'MAX_PIXELS', 'MIN_SIZE', 'check_radiograph', 'decode_checked',
           'decode_image', 'image_to_array', 'is_dicom', 'read_file_bytes', 'read_image', 'read_image_bytes']

MIN_SIZE = 32  # pixels, the shorter side
MAX_PIXELS = 8192 * 8192  # twice the largest detector's side; below PIL's own bomb limits (89 Mpx warns)
MAX_FILE_BYTES = 1 << 30  # a 16-bit 8192 x 8192 film uncompressed is 128 MiB
MIN_SPREAD = 0.05  # of the grey range, between the 1st and 99th percentiles (the shared films: 0.22 at least)
MAX_ONE_LEVEL = 0.9  # share of the pixels at one grey level (the shared films: 0.70 at most, black borders included)
MAX_COLOURED = 0.2  # share of the pixels whose channels differ by over COLOURED_LEVELS of 255
COLOURED_LEVELS = 40
MIN_ONE_HUE = 0.95  # of a coloured image's variance along its main axis in RGB (tinted public films: 0.97 at least)
DICOM_SUFFIXES = ('.dcm', '.dicom', '.dic')
DECODER_PACKAGES = 'pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle (or python-gdcm)'


class ImageReadError(BadInputError):
    """A file that cannot be read as a radiograph; the message names the file and the reason."""


def is_dicom(path: Union[str, Path], data: bytes = b'') -> bool:
    """Whether a file is DICOM, by its suffix or the DICM marker after the 128-byte preamble (of data, else the file)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if not data:
        with path.open('rb') as f:
            data = f.read(132)
    return _dicom_marker(data)


def _dicom_marker(data: bytes) -> bool:
    """Whether bytes begin as a DICOM file does: the DICM marker after the 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b'DICM'


def read_file_bytes(path: Union[str, Path]) -> bytes:
    """A radiograph file's bytes, read once; ImageReadError when it is no regular file, is empty, too large or unreadable."""
    path = Path(path)
    name = display(path)
    try:
        mode = path.stat()
    except FileNotFoundError:
        raise ImageReadError(f'{name}: no such file.') from None
    except OSError as e:
        raise ImageReadError(f'{name}: cannot be read ({e.strerror or e}).') from e
    if stat.S_ISDIR(mode.st_mode):
        raise ImageReadError(f'{name}: a folder, not an image file.')
    if not stat.S_ISREG(mode.st_mode):
        kind = 'a named pipe (FIFO)' if stat.S_ISFIFO(mode.st_mode) else 'a socket' if stat.S_ISSOCK(mode.st_mode) \
            else 'a device'
        raise ImageReadError(f'{name}: {kind}, not a regular image file.')
    if mode.st_size > MAX_FILE_BYTES:
        raise ImageReadError(f'{name}: {mode.st_size:,} bytes is over the {MAX_FILE_BYTES:,} byte limit of a radiograph '
                             'file.')
    try:
        with path.open('rb') as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:  # vanished, no permission, an I/O error: this file, not the whole batch
        raise ImageReadError(f'{name}: cannot be read ({e.strerror or e}).') from e
    if not data:
        raise ImageReadError(f'{name}: empty file.')
    if len(data) > MAX_FILE_BYTES:
        raise ImageReadError(f'{name}: over the {MAX_FILE_BYTES:,} byte limit of a radiograph file.')
    return data


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
            _check_grey(image, name)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(f'{name}: {e}') from e
    except UnidentifiedImageError as e:
        raise ImageReadError(f'{name}: not an image file PIL can read (PNG, JPEG, ...) nor DICOM.') from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f'{name}: corrupt or truncated image ({e}).') from e
    return image_to_array(image)


def _check_grey(image: Image.Image, name: str) -> None:
    """Refuse a colour image: a radiograph is grey, or a photograph of one tinted by one hue (its pixels on one line
    through RGB space), whatever its file's mode; arrows and text drawn on one pass (few pixels)."""
    if image.mode in ('1', 'L', 'LA', 'I', 'F') or image.mode.startswith('I;'):
        return
    thumbnail = image.convert('RGB')
    thumbnail.thumbnail((256, 256))
    pixels = np.asarray(thumbnail, dtype=np.float64).reshape(-1, 3)
    coloured = float(((pixels.max(-1) - pixels.min(-1)) > COLOURED_LEVELS).mean())
    if coloured <= MAX_COLOURED:
        return
    centred = pixels - pixels.mean(0)
    spread = np.linalg.eigvalsh(centred.T @ centred)  # ascending: the last is the main axis
    one_hue = spread[-1] / max(spread.sum(), 1e-12)
    if one_hue < MIN_ONE_HUE:
        raise ImageReadError(f'{name}: a colour image ({coloured:.0%} of its pixels coloured, in several hues); a '
                             'radiograph is grey.')


def read_image_bytes(data: bytes, name: str) -> np.ndarray:
    """Read an image held in memory (a dataset's embedded PNG or JPEG) as read_image reads a file."""
    return decode_image(data, name)


def image_to_array(image: Image.Image) -> np.ndarray:
    """A decoded PIL image as float32 (H, W) in [0, 1]: 8 bits / 255, more bits by their own range."""
    if image.mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F'):
        return _scaled(np.asarray(image))
    if image.mode != 'L':
        image = image.convert('L')  # '1', P, RGB, RGBA, LA, CMYK, YCbCr: luma, alpha ignored
    return np.asarray(image, dtype=np.float32) / 255.


def _read_dicom(data: bytes, name: str) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as e:
        raise ImageReadError(f'{name}: unreadable DICOM ({e}).') from e
    if 'PixelData' not in ds:
        raise ImageReadError(f'{name}: DICOM without pixel data (no PixelData element).')
    frames = int(ds.get('NumberOfFrames', 1) or 1)
    if frames > 1:
        raise ImageReadError(f'{name}: multi-frame DICOM ({frames} frames); one radiograph per file is '
                             'expected.')
    rows, columns = int(ds.get('Rows', 0) or 0), int(ds.get('Columns', 0) or 0)
    if rows * columns > MAX_PIXELS:
        raise _too_large(name, columns, rows)
    syntax = getattr(getattr(ds, 'file_meta', None), 'TransferSyntaxUID', None)
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as e:
        raise ImageReadError(
            f'{name}: cannot decode DICOM transfer syntax {getattr(syntax, "name", syntax)!r}; install the decoders: '
            f'pip install {DECODER_PACKAGES} ({e}).') from e
    except (ValueError, AttributeError, KeyError, TypeError) as e:
        raise ImageReadError(f'{name}: DICOM pixel data does not match its header ({e}).') from e
    photometric = str(ds.get('PhotometricInterpretation', 'MONOCHROME2')).upper()
    if photometric in ('RGB', 'YBR_FULL', 'YBR_FULL_422') or pixels.ndim == 3:
        raise ImageReadError(f'{name}: colour DICOM ({photometric}); a grey radiograph is expected.')
    pixels = apply_voi_lut(apply_modality_lut(pixels, ds), ds)
    image = _scaled(pixels)
    return 1. - image if photometric == 'MONOCHROME1' else image


def read_image(path: Union[str, Path]) -> np.ndarray:
    """Read a radiograph (PNG, JPEG, TIFF, DICOM) as float32 (H, W) in [0, 1]; ImageReadError on bad input."""
    data = read_file_bytes(path)
    return decode_image(data, display(path), is_dicom(path, data))


def decode_image(data: bytes, name: str, dicom: Optional[bool] = None) -> np.ndarray:
    """Decode a radiograph file's bytes (DICOM when dicom, or when None, by its DICM marker) and check it as
    read_image does: float32 (H, W) in [0, 1], or ImageReadError naming `name`."""
    if not data:
        raise ImageReadError(f'{name}: empty image.')
    if dicom is None:
        dicom = _dicom_marker(data)
    return decode_checked(name, lambda: _read_dicom(data, name) if dicom else _read_pil(io.BytesIO(data), name))


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
    check_radiograph(image, name)
    return image


def check_radiograph(image: np.ndarray, name: str) -> None:
    """Refuse what cannot be a radiograph: too small, not finite, blank or nearly constant, mostly one grey level."""
    if min(image.shape) < MIN_SIZE:
        raise ImageReadError(f'{name}: {image.shape[1]}x{image.shape[0]} px is under the {MIN_SIZE} px minimum.')
    if not np.isfinite(image).all():
        raise ImageReadError(f'{name}: pixel values are not finite.')
    step = max(1, min(image.shape) // 256)  # the measures on about 256 px a side: cheap, and as telling
    pixels = image[::step, ::step]
    low, high = np.percentile(pixels, [1, 99])
    if high - low < MIN_SPREAD:
        raise ImageReadError(f'{name}: blank or nearly constant (98% of its pixels within {high - low:.1%} of the grey '
                             'range); not a radiograph.')
    levels = np.bincount(np.clip(np.round(pixels * 255), 0, 255).astype(np.int64).ravel(), minlength=256)
    one_level = levels.max() / levels.sum()
    if one_level > MAX_ONE_LEVEL:
        raise ImageReadError(f'{name}: {one_level:.0%} of its pixels have one grey level (a blank, a mask or a '
                             'drawing); not a radiograph.')
