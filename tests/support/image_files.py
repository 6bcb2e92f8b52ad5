"""Image files that attack a reader, made for the tests."""
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def bomb_png(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A small PNG whose header claims width x height pixels, as a decompression bomb does."""
    buffer = io.BytesIO()
    Image.new('L', (64, 64)).save(buffer, format='PNG')
    data = bytearray(buffer.getvalue())
    header = data[12:29]  # IHDR: type, width, height, ...
    header[4:12] = struct.pack('>II', width, height)
    data[12:29] = header
    data[29:33] = struct.pack('>I', zlib.crc32(bytes(header)))
    path.write_bytes(bytes(data))
    return path


def distinct_film(seed: int, shape=(64, 48), dtype=np.uint8) -> np.ndarray:
    """Pixels of a film no other seed's film is a near-copy of (random texture), in the dtype's full range."""
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
