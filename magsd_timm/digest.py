"""SHA-256 of a file's bytes: what ties a record (a dataset row, a classifier's lung crop) to the file it names.

Read in blocks, so that a large file is never held in memory whole. Imports nothing of the package,
so that every layer can use it.
"""
import hashlib
from pathlib import Path
from typing import Union

__all__ = ['file_sha256']


def file_sha256(path: Union[str, Path]) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()
