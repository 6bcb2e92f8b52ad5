"""Markdown tables: the one way reports, model cards, dataset cards and benchmarks render a table.

What they show of a local path is ``shown_path``'s: relative to the working folder, or the file name,
never a folder of the machine that made them (cards and tables are published).
"""
import os
import shlex
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

__all__ = ['markdown_table', 'shown_command', 'shown_path']


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table: the header cells, then one line per row (a cell's '|' and line breaks escaped)."""
    def cell(value: Any) -> str:
        return ' '.join(str(value).split()).replace('|', '\\|')

    lines = ['| ' + ' | '.join(map(cell, header)) + ' |', '|' + '---|' * len(header)]
    return '\n'.join(lines + ['| ' + ' | '.join(map(cell, row)) + ' |' for row in rows])


def shown_path(value: Union[str, Path]) -> str:
    """An absolute path relative to the working folder when inside it, else its name; anything else unchanged."""
    text = str(value)
    if not os.path.isabs(text):
        return text
    try:
        return str(Path(text).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return Path(text).name


def shown_command(command: str) -> str:
    """A recorded command line with each absolute path in it shown as shown_path shows it."""
    try:
        words = shlex.split(command)
    except ValueError:  # unbalanced quotes: shown as recorded
        return command
    return shlex.join(shown_path(word) for word in words)
