"""The command-line convention: exit codes by kind of error, one printable line, checked flag values."""
import argparse
import errno
import sys

import pytest

from magsd_timm.cli.console import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_FAILED, exit_code, json_object, number, run_command
from magsd_timm.data.reader import ImageReadError
from magsd_timm.errors import BadInputError, DivergedError, display
from magsd_timm.hub.push import PushError
from magsd_timm.models import UnsafeWeightsError, WeightsMismatchError
from magsd_timm.train.loop import NonFiniteLossError
from magsd_timm.utils.outputs import OutputBusyError, OutputWriteError


@pytest.mark.parametrize('error, code', [
    (BadInputError('x'), EXIT_BAD_INPUT), (ImageReadError('x'), EXIT_BAD_INPUT),
    (UnsafeWeightsError('x'), EXIT_BAD_INPUT), (WeightsMismatchError('x'), EXIT_BAD_INPUT),
    (OutputBusyError('x'), EXIT_BAD_INPUT), (FileNotFoundError('x'), EXIT_BAD_INPUT), (ValueError('x'), EXIT_BAD_INPUT),
    (OutputWriteError('x'), EXIT_FAILED), (PushError('x'), EXIT_FAILED), (OSError(errno.EIO, 'x'), EXIT_FAILED),
    (RuntimeError('x'), EXIT_FAILED), (NonFiniteLossError('x'), EXIT_DIVERGED), (DivergedError('x'), EXIT_DIVERGED),
])
def test_each_kind_of_error_has_its_documented_exit_code(error, code):
    assert exit_code(error) == code


def test_an_error_becomes_one_line_and_its_exit_code_without_a_traceback(capsys):
    def fails():
        raise BadInputError('first line\nsecond line')

    assert run_command('prog', fails) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err == 'prog: first line second line\n' and 'Traceback' not in err


def test_the_traceback_flag_and_variable_print_it(capsys, monkeypatch):
    def fails():
        raise RuntimeError('boom')

    assert run_command('prog', fails, traceback=True) == EXIT_FAILED
    assert 'Traceback' in capsys.readouterr().err
    monkeypatch.setenv('MAGSD_TRACEBACK', '1')
    run_command('prog', fails)
    assert 'Traceback' in capsys.readouterr().err


def test_an_unexpected_error_says_so_and_how_to_see_more(capsys):
    def fails():
        raise KeyError('k')

    assert run_command('prog', fails) == EXIT_FAILED
    err = capsys.readouterr().err
    assert 'unexpected KeyError' in err and 'run again with --traceback' in err


def test_secrets_are_redacted_from_the_message(capsys):
    def fails():
        raise OSError('token hf_secret was refused')

    run_command('prog', fails, redact=('hf_secret', None))
    assert capsys.readouterr().err == 'prog: token *** was refused\n'


def test_file_names_that_are_not_utf8_display_as_escapes():
    name = b'scan_\xff.png'.decode('utf-8', 'surrogateescape')  # as Python decodes such a name from the OS
    assert display(name) == 'scan_\\xff.png'
    assert display(name).encode('utf-8')  # printable and writable as UTF-8
    assert display('\ud800') == '\\ud800' and display('plain') == 'plain'


@pytest.mark.parametrize('kind, bounds, text, ok', [
    (float, dict(low=0, low_open=True), '1e-3', True), (float, dict(low=0, low_open=True), '0', False),
    (float, dict(low=0, low_open=True), '-1', False), (float, dict(), 'nan', False), (float, dict(), 'inf', False),
    (float, dict(low=0, high=1, high_open=True), '1', False), (int, dict(low=1), '0', False), (int, dict(), '1.5', False),
    (int, dict(low=0), '7', True),
])
def test_number_accepts_only_finite_values_in_range(kind, bounds, text, ok):
    parse = number(kind, **bounds)
    if ok:
        assert parse(text) == kind(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_json_object_takes_objects_only():
    assert json_object('{"num_maps": 4}') == {'num_maps': 4}
    for text in ('[1]', '{bad', '3'):
        with pytest.raises(argparse.ArgumentTypeError):
            json_object(text)


def test_a_library_warning_is_one_line_on_stderr(capsys):
    import warnings

    def warns():
        warnings.warn('first line\n   second line\n\n third', UserWarning, stacklevel=1)
        return 0
    assert run_command('magsd predict', warns) == 0
    err = capsys.readouterr().err
    assert err == 'magsd predict: warning: first line second line third\n'


def test_every_command_says_its_version(capsys):
    import importlib.util
    from pathlib import Path

    import magsd_timm
    from magsd_timm.cli.magsd import main as magsd
    from magsd_timm.cli.magsd_hub import main as magsd_hub

    recipes = Path(__file__).resolve().parents[2] / 'recipes'

    def recipe(name: str):
        spec = importlib.util.spec_from_file_location(f'{name}_recipe', recipes / f'{name}.py')
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module._parse_args

    for command in (magsd, magsd_hub, recipe('train'), recipe('prepare_data'), recipe('benchmark')):
        with pytest.raises(SystemExit) as exit_:
            command(['--version'])
        assert exit_.value.code == 0 and capsys.readouterr().out.endswith(f' (magsd-timm) {magsd_timm.__version__}\n')


def _parsers():
    """Every command's parser, sub-commands included: magsd, magsd-hub and the recipes."""
    import argparse

    from magsd_timm.cli.magsd import _parser as magsd
    from magsd_timm.cli.magsd_hub import _parser as magsd_hub
    from support.recipes import load_recipe

    todo = [magsd(), magsd_hub(), *(load_recipe(name)._parser() for name in ('train', 'prepare_data', 'benchmark'))]
    while todo:
        parser = todo.pop()
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())


def test_every_option_of_every_command_says_what_it_does_and_its_default():
    import argparse

    from magsd_timm.cli.console import EXIT_CODES

    for parser in _parsers():
        assert parser.epilog == EXIT_CODES, parser.prog  # one exit-code table, the same everywhere
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f'{parser.prog} {action.option_strings or action.dest}: no help'
            flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))  # on or off
            shown = flag or action.default in (None, argparse.SUPPRESS) or not action.option_strings
            assert shown or 'default' in formatter._get_help_string(action), \
                f'{parser.prog} {action.option_strings[-1]}: default {action.default!r} not shown'


@pytest.mark.parametrize('command, blocked, extra', [
    (['magsd', 'predict', 'MODEL', 'IMAGE'], 'cv2', 'data'),
    (['magsd', 'export', 'MODEL', '--format', 'onnx', '--output', 'OUT'], 'onnxruntime', 'export'),
    (['train', '--epochs', '1'], 'accelerate', 'train'),
])
def test_a_missing_extra_is_one_line_that_names_it(trained_run, tmp_path, capsys, monkeypatch, command, blocked,
                                                    extra):
    from magsd_timm.cli.magsd import main
    from magsd_timm.data.sample import sample_records
    from support.recipes import load_recipe

    given = {'MODEL': str(trained_run), 'IMAGE': sample_records()[0]['path'], 'OUT': str(tmp_path / 'm.onnx')}
    program, *argv = [given.get(a, a) for a in command]
    monkeypatch.setitem(sys.modules, blocked, None)  # as if not installed: importing it fails
    if program == 'magsd':
        code = main(argv)
    else:  # the recipe's imports at the top of the script are guarded
        with pytest.raises(SystemExit) as exit_:
            load_recipe(program)
        code = exit_.value.code
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1 and f'pip install "magsd-timm[{extra}]"' in err, err
    assert not (tmp_path / 'm.onnx').exists()


def test_a_wrong_argument_is_one_line_that_points_to_the_help(capsys):
    from magsd_timm.cli.console import CommandParser

    parser = CommandParser(prog='train.py')
    parser.add_argument('--epochs', type=number(int, 1, 10))
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(['--epochs', '0'])
    err = capsys.readouterr().err
    assert exit_.value.code == EXIT_BAD_INPUT
    assert err == 'train.py: argument --epochs: 0 must be >= 1 (see train.py --help)\n'  # no usage lines


def test_ctrl_c_while_a_script_loads_is_one_line_and_exit_130(capsys):
    from magsd_timm.cli.console import extras_needed

    with pytest.raises(SystemExit) as exit_:
        with extras_needed('train.py'):
            raise KeyboardInterrupt
    assert exit_.value.code == 130 and capsys.readouterr().err == 'train.py: interrupted\n'


def test_an_error_line_is_printable_and_bounded(capsys):
    run_command('magsd predict', lambda: (_ for _ in ()).throw(BadInputError('x\u202e\x1b[2J' + 'y' * 10_000)))
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and '\\u202e\\x1b[2J' in err and len(err) < 2100 and '(10,' in err
