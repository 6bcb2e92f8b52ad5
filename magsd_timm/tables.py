"""Markdown tables: the one way reports, model cards, dataset cards and benchmarks render a table."""
from typing import Any, Iterable, Sequence

__all__ = ['markdown_table']


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table: the header cells, then one line per row (a cell's '|' and line breaks escaped)."""
    def cell(value: Any) -> str:
        return ' '.join(str(value).split()).replace('|', '\\|')

    lines = ['| ' + ' | '.join(map(cell, header)) + ' |', '|' + '---|' * len(header)]
    return '\n'.join(lines + ['| ' + ' | '.join(map(cell, row)) + ' |' for row in rows])
