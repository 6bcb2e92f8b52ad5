"""SHA-256: what ties a record (a dataset row, a classifier's lung crop, a run's data) to what it names.

A file is read in blocks, so that a large one is never held in memory whole. Imports nothing of the
package, so that every layer can use it.
"""
import hashlib
import json
from pathlib import Path
from typing import Any, Union

__all__ = ['bytes_sha256', 'file_sha256', 'json_sha256']


def file_sha256(path: Union[str, Path]) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def bytes_sha256(data: bytes) -> str:
    """The SHA-256 of bytes held in memory, as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


def json_sha256(value: Any) -> str:
    """The SHA-256 of a JSON value in one canonical spelling (sorted keys, no spaces): equal values, equal digests."""
    return bytes_sha256(json.dumps(value, sort_keys=True, separators=(',', ':'), allow_nan=False).encode('utf-8'))
