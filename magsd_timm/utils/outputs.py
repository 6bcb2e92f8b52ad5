"""Writing outputs safely: whole files or none, JSON without NaN, one writer per output, clear disk errors.

* ``atomic_path`` gives a temporary path beside the destination; it replaces the destination only
  when the block succeeds, and is removed when it fails, so an earlier output is never truncated.
  ``atomic_folder`` does the same for a folder (a checkpoint, a prepared dataset), and
  ``recover_folder`` puts back or cleans up what a killed writer left beside one.
* ``exclusive_lock`` lets one process at a time write an output (a run folder, a prepared dataset);
  a second one is refused at once. The lock is the operating system's (``filelock``: ``flock`` on
  POSIX, ``msvcrt`` on Windows), so a killed process leaves no stale lock behind.
* ``OutputWriteError`` says what could not be written, where, and why (a full disk by name).
"""
import contextlib
import errno
import json
import math
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Union

import filelock

from ..errors import BadInputError, display

__all__ = ['OutputBusyError', 'OutputWriteError', 'atomic_folder', 'atomic_path', 'check_no_overlap', 'exclusive_lock',
           'recover_folder',
           'replace_folder', 'staging_folder', 'strict_json', 'umask_modes_inside', 'write_failure',
           'write_text_atomic']

PathLike = Union[str, Path]


class OutputBusyError(BadInputError):
    """Another process is writing the same output."""


class OutputWriteError(OSError):
    """An output could not be written (full disk, no permission, ...); the message says which and where."""


def check_no_overlap(output: PathLike, inputs: Iterable[PathLike], what: str = 'output') -> None:
    """Refuse an output that is, holds or lies inside one of the inputs: replacing it would delete them."""
    target = Path(output).resolve()
    for source in inputs:
        resolved = Path(source).resolve()
        if resolved == target or target in resolved.parents or resolved in target.parents:
            relation = ('is' if resolved == target else 'holds' if target in resolved.parents else 'lies inside')
            raise BadInputError(f'the {what} {display(output)} {relation} the input {display(source)}: writing it '
                                'could delete or mix in its files; choose an output outside every input.')


def _free_space(path: Path) -> str:
    for candidate in (path, *path.parents):
        if candidate.exists():
            free = shutil.disk_usage(candidate).free
            return f'{free / 2 ** 20:.1f} MiB free on the file system of {display(candidate)}'
    return 'free space unknown'


# how torch's C++ writers (the zip stream behind torch.save) report a write the disk could not take
_TORCH_WRITE_FAILURES = ('iostream error', 'unexpected pos', 'file write failed', 'No space left')


def _disk_full(error: BaseException) -> bool:
    """Whether an error says the disk is full: errno, or the texts of torch's C++ writers."""
    text = str(error)
    return getattr(error, 'errno', None) in (errno.ENOSPC, errno.EDQUOT) \
        or any(failure in text for failure in _TORCH_WRITE_FAILURES)


def write_failure(path: PathLike, error: BaseException, what: str = 'output', after: str = '') -> OutputWriteError:
    """The error to raise when writing path failed: a full disk is named as such, with the free space."""
    path = Path(path)
    if _disk_full(error):
        reason = f'the disk is full ({_free_space(path)})'
    elif getattr(error, 'errno', None) in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = f'no permission to write there ({getattr(error, "strerror", None) or error})'
    else:
        reason = ' '.join(str(error).split())
    failure = OutputWriteError(f'could not write the {what} {display(path)}: {reason}{after}')
    failure.errno = getattr(error, 'errno', None) or (errno.ENOSPC if _disk_full(error) else errno.EIO)
    return failure


@contextlib.contextmanager
def _failures_named(path: Path, what: str) -> Iterator[None]:
    """Turn a failed write in the block into an OutputWriteError that says what, where and why."""
    try:
        yield
    except OSError as e:
        raise write_failure(path, e, what) from e
    except RuntimeError as e:  # torch's writers report a full disk as a RuntimeError
        if _disk_full(e):
            raise write_failure(path, e, what) from e
        raise


def _umask_mode(folder: bool) -> int:
    """The mode any tool's new file (or folder) gets under the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def _usual_mode(path: Path, staged: Path, folder: bool) -> None:
    """Give a staged file or folder the mode of the one it replaces, else the umask's (mkstemp and mkdtemp make them
    private, and so do writers such as safetensors, which replace the file they are given)."""
    os.chmod(staged, stat.S_IMODE(path.stat().st_mode) if path.exists() else _umask_mode(folder))


def umask_modes_inside(folder: Path) -> None:
    """Every file and folder written inside a staging folder gets the umask's mode (writers may make them private)."""
    for inner in folder.rglob('*'):
        if not inner.is_symlink():
            os.chmod(inner, _umask_mode(inner.is_dir()))


@contextlib.contextmanager
def atomic_path(path: PathLike, what: str = 'output') -> Iterator[Path]:
    """A temporary path beside path (same suffix) to write; it becomes path only if the block succeeds."""
    path = Path(path)
    with _failures_named(path, what):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, staged = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.stem}.', suffix=f'.partial{path.suffix}')
        os.close(handle)
        _usual_mode(path, Path(staged), folder=False)
    staged = Path(staged)
    try:
        with _failures_named(path, what):
            yield staged
            _usual_mode(path, staged, folder=False)  # again: the block's writer may have replaced the file
            os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)


def recover_folder(path: PathLike) -> List[str]:
    """Undo what a killed atomic_folder left beside path (call it holding path's lock); what was done, said.

    A retired previous folder (.NAME.old) is put back when path is missing and removed otherwise;
    staging folders (.NAME.staging-*) are removed.
    """
    path = Path(path)
    done = []
    retired = path.with_name(f'.{path.name}.old')
    if retired.exists():
        if path.exists():
            shutil.rmtree(retired)
            done.append(f'removed {display(retired)}, left by an interrupted run')
        else:
            retired.rename(path)
            done.append(f'restored {display(path)} from {display(retired)}, left by an interrupted run')
    for staging in path.parent.glob(staging_folder(path, '*').name):
        shutil.rmtree(staging, ignore_errors=True)
        done.append(f'removed {display(staging)}, left by an interrupted run')
    return done


def staging_folder(path: PathLike, tag: str) -> Path:
    """The staging folder of path named by tag (.NAME.staging-TAG), which recover_folder clears after a kill."""
    path = Path(path)
    return path.with_name(f'.{path.name}.staging-{tag}')


def replace_folder(staging: PathLike, path: PathLike) -> None:
    """Move a filled staging folder to path; an earlier path is retired beside it (.NAME.old) until then."""
    staging, path = Path(staging), Path(path)
    if path.exists():
        retired = path.with_name(f'.{path.name}.old')
        path.rename(retired)
        staging.rename(path)
        shutil.rmtree(retired)
    else:
        staging.rename(path)


@contextlib.contextmanager
def atomic_folder(path: PathLike, what: str = 'output') -> Iterator[Path]:
    """A staging folder beside path to fill; it replaces path only if the block succeeds, and is removed if not."""
    path = Path(path)
    with _failures_named(path, what):
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=staging_folder(path, '').name, dir=path.parent))
        _usual_mode(path, staging, folder=True)
    try:
        with _failures_named(path, what):
            yield staging
            umask_modes_inside(staging)
            replace_folder(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def write_text_atomic(path: PathLike, text: str, what: str = 'output') -> Path:
    """Write text (UTF-8) to path atomically: a failure leaves the earlier file as it was."""
    with atomic_path(path, what) as staged:
        staged.write_text(text, encoding='utf-8')
    return Path(path)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def strict_json(value: Any, indent: int = 2) -> str:
    """JSON that every parser reads: NaN and infinities become null, never a bare NaN."""
    return json.dumps(_finite_or_none(value), indent=indent, allow_nan=False)


@contextlib.contextmanager
def exclusive_lock(output: PathLike, what: str) -> Iterator[Path]:
    """Hold the lock of an output (a hidden .NAME.lock beside it) for the block, or refuse at once if it is held.

    The lock files are removed when the block ends, so none stays beside the output. A writer that locked
    a lock file its predecessor removed meanwhile holds nothing: it finds the path gone or another file
    there, lets go and locks the file at the path (a few tries, then it is refused as busy).
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    path = output.with_name(f'.{output.name}.lock')
    holder = output.with_name(f'.{output.name}.lock.pid')  # who holds it, for the message of the refused writer
    locked: List[int] = []  # the inode of each file the lock was taken on
    for _ in range(5):
        lock = filelock.FileLock(path, blocking=False, on_acquired=lambda fd: locked.append(os.fstat(fd).st_ino))
        try:
            lock.acquire()
        except filelock.Timeout:
            break
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == locked[-1]:
            break
        lock.release()  # the file it locked was removed by the writer before: try the one at the path now
    if not lock.is_locked:
        try:
            pid = holder.read_text(encoding='utf-8').strip() or '?'
        except OSError:
            pid = '?'
        raise OutputBusyError(
            f'{display(output)} is being written by another {what} (process {pid}): wait for it to end, '
            'or choose another output.') from None
    try:
        holder.write_text(str(os.getpid()), encoding='utf-8')
        yield path
    finally:
        holder.unlink(missing_ok=True)
        path.unlink(missing_ok=True)  # removed while held: a writer that locks it now finds it gone (above)
        lock.release()
