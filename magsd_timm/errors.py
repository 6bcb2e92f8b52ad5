"""The errors every layer raises (models, data, training, evaluation, Hub, command line) and how they print.

An error says what kind of failure it is; ``console`` maps each kind to its documented exit code.
This module imports nothing of the package, so the lowest layer can raise what the command line reports.
"""
import re
from pathlib import Path
from typing import Union

__all__ = ['BadInputError', 'DivergedError', 'display', 'printable']


class BadInputError(ValueError):
    """The user's input (argument, file, data, checkpoint) is wrong: exit code 2."""


class DivergedError(RuntimeError):
    """A training run diverged: exit code 3."""


def display(value: Union[str, Path, bytes]) -> str:
    """Text that can be printed and written as UTF-8 whatever a file name holds (undecodable bytes as \\xNN)."""
    if isinstance(value, bytes):
        return value.decode('utf-8', 'backslashreplace')
    text = str(value)
    try:
        return text.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')
    except UnicodeEncodeError:  # surrogates that no file name decoding made
        return text.encode('utf-8', 'backslashreplace').decode('utf-8')


# control characters (C0, DEL, C1) and the Unicode marks that reorder or hide text (bidirectional embeddings,
# overrides and isolates, zero-width marks): in a name they break a terminal's line or reverse what follows it
_UNPRINTABLE = re.compile('[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]')


def printable(value: Union[str, Path, bytes]) -> str:
    """display(value) with every control or bidirectional character escaped (\\xNN, \\uNNNN): safe on one line of a
    terminal or a table, whatever a file name holds."""
    return _UNPRINTABLE.sub(lambda m: m[0].encode('unicode_escape').decode('ascii'), display(value))
