"""The README and docs/ stay true: every command they quote parses, every file they link exists."""
import argparse
import itertools
import os
import re
import shlex
from pathlib import Path

import pytest

from support.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
FENCE = re.compile(r'^```bash\n(.*?)^```', re.M | re.S)
NOT_OURS = ('pip', 'ruff', 'hf', 'export')  # commands of other tools, quoted as they are


def _commands(page: Path):
    """Each command line of the page's bash blocks, as argv (continuations joined, comments and && split)."""
    for block in FENCE.findall(page.read_text(encoding='utf-8')):
        for line in block.replace('\\\n', ' ').splitlines():
            words = shlex.split(line, comments=True)
            while words:
                part = words[:words.index('&&')] if '&&' in words else words
                words = words[len(part) + 1:]
                if any(not re.fullmatch(r'[A-Z_]+=.*', word) for word in part):  # D=...: a variable, no command
                    yield part


def _script_parser(script: str, assigned: list) -> argparse.ArgumentParser:
    """A parser for a recipes/*.sh script: the positionals of its usage line; the variables it documents."""
    path = ROOT / script
    assert path.is_file() and os.access(path, os.X_OK), f'{script} is not an executable recipe'
    headers = ''.join(p.read_text() for p in (ROOT / 'recipes').glob('*.sh'))
    documented = set(re.findall(r'^#   ([A-Z_]+) ', headers, re.M))
    assert set(assigned) <= documented, f'{script}: {sorted(set(assigned) - documented)} are no documented settings'
    usage = re.search(r'usage: (?:\S+) ([^}]+)\}', headers)[1].split()
    parser = argparse.ArgumentParser(prog=script)
    for word in usage:
        parser.add_argument(word.strip('[]'), nargs='?' if word.startswith('[') else None)
    return parser


def _parser_and_args(argv):
    """The parser of the program an argv runs, and the arguments it is given."""
    from magsd_timm.cli.magsd import _parser as magsd
    from magsd_timm.cli.magsd_hub import _parser as magsd_hub

    assigned = [word.split('=')[0] for word in itertools.takewhile(lambda w: re.fullmatch(r'[A-Z_]+=.*', w), argv)]
    program, *args = argv[len(assigned):]
    if re.fullmatch(r'recipes/\w+\.sh', program):
        return _script_parser(program, assigned), args
    if program == 'magsd':
        return magsd(), args
    if program == 'magsd-hub':
        return magsd_hub(), args
    if program == 'accelerate' and args[:1] == ['launch']:
        script = next(i for i, a in enumerate(args) if a.endswith('.py'))  # after the launcher's own flags
        program, args = 'python', args[script:]
    if program == 'python' and args[:2] == ['-m', 'pytest']:
        return None, args
    if re.fullmatch(r'\.ci/\w+', program):  # CI's scripts: they exist and take no arguments
        assert (ROOT / program).is_file() and not args, argv
        return None, args
    if program == 'python' and args and re.fullmatch(r'recipes/\w+\.py', args[0]):
        return load_recipe(Path(args[0]).stem)._parser(), args[1:]
    raise AssertionError(f'{shlex.join(argv)}: a command the docs test does not know')


COMMANDS = [(page, argv) for page in PAGES for argv in _commands(page) if argv[0] not in NOT_OURS]


def test_the_pages_quote_commands():
    assert len(COMMANDS) > 30 and {argv[0] for _, argv in COMMANDS} >= {'magsd', 'magsd-hub', 'python', 'accelerate'}


@pytest.mark.parametrize('page, argv', COMMANDS, ids=[f'{p.name}: {shlex.join(a)[:60]}' for p, a in COMMANDS])
def test_every_quoted_command_parses_with_its_programs_parser(page, argv, capsys):
    parser, args = _parser_and_args(argv)
    if parser is None:
        return
    try:
        parser.parse_args(args)
    except SystemExit as exit_:
        assert exit_.code == 0, f'{page.name}: {shlex.join(argv)}: {capsys.readouterr().err.strip()}'
    for flag, value in zip(args, args[1:]):
        if flag in ('-c', '--config') and value.startswith('recipes/'):
            assert (ROOT / value).is_file(), f'{page.name}: {value} does not exist'


@pytest.mark.parametrize('page', PAGES, ids=[p.name for p in PAGES])
def test_every_linked_file_exists(page):
    for target in LINK.findall(page.read_text(encoding='utf-8')):
        if re.match(r'(https?|mailto):', target) or target.startswith('#'):
            continue
        assert (page.parent / target.split('#')[0]).exists(), f'{page.name} links {target}, which does not exist'


def test_the_readme_zoo_table_is_the_registrys():
    from magsd_timm.models.zoo import zoo_markdown

    assert zoo_markdown() in (ROOT / 'README.md').read_text(encoding='utf-8')


def test_no_page_shows_a_path_of_the_machine_it_was_written_on():
    for page in [*PAGES, *sorted((ROOT / 'recipes' / 'configs').glob('*.yaml'))]:
        text = page.read_text(encoding='utf-8')
        assert not re.search(r'(?<![\w.])/(work|home|root|tmp|Users)/', text), page.name
