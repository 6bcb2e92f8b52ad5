"""The errors every layer raises (models, data, training, evaluation, Hub, command line) and how they print.

An error says what kind of failure it is; ``console`` maps each kind to its documented exit code.
This module imports nothing of the package, so the lowest layer can raise what the command line reports.
"""
from pathlib import Path
from typing import Union

__all__ = ['BadInputError', 'DivergedError', 'display']


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
