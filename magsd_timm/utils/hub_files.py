"""Hub references and the files downloaded for them, both treated as untrusted.

* ``parse_hub_ref``: what follows ``hf-hub:`` is a repo id (``org/name``, as huggingface_hub validates
  it) with an optional ``@revision``, and nothing else: never a local path (``/abs/dir``, ``../x``),
  and an ``org/name`` that happens to be a local folder is still the Hub's repo.
* ``hub_file`` and ``hub_snapshot`` download through huggingface_hub and check that every file they
  return lies inside the Hub cache before it is used. A server can make the client store its bytes
  elsewhere (an ETag such as ``../../X`` becomes a blob path): such a file and its lock are removed,
  and the download is refused.

Models, datasets and cards all come through here, so that a Hub id means the Hub everywhere.

``hub_unreachable`` asks the Hub once whether it answers (seconds, where huggingface_hub retries a dead
network for up to a minute per file); ``hub_when_reachable`` runs a block against the Hub when it
answers and against the Hub cache alone when it does not, and a file the cache lacks then ends the
block with one error that says why. ``hub_file`` and ``hub_snapshot`` run in such a block, so every
download of the package follows that rule; a block inside another reuses its answer (one request).

``hub_content`` finds what the repository's top-level ``hub/`` holds (card templates, the published
model repos): data only, installed as ``magsd_timm.hub_content`` (pyproject.toml).
"""
import contextlib
import contextvars
import importlib.resources
import os
import re
from pathlib import Path
from typing import Iterator, Optional, Tuple

from ..errors import BadInputError, display

__all__ = ['HUB_CONTENT', 'HUB_PREFIX', 'HubFileError', 'check_hub_target', 'check_revision', 'hub_cache_only',
           'hub_content', 'hub_file', 'hub_snapshot', 'hub_unreachable', 'hub_when_reachable', 'parse_hub_ref']

HUB_PREFIX = 'hf-hub:'
HUB_CONTENT = 'magsd_timm.hub_content'  # the repository's hub/ folder, installed as package data
_REF_PART = re.compile(r'[A-Za-z0-9_][A-Za-z0-9._-]*')
# inside a hub_when_reachable block, its answer (why the Hub cannot serve, or None): asked once for the block
_BLOCK_ANSWER: contextvars.ContextVar[Optional[Tuple[Optional[str]]]] = contextvars.ContextVar('hub_answer',
                                                                                            default=None)


class HubFileError(OSError):
    """The Hub answered with a file that cannot be used as it was stored (outside the cache): a failure, exit 1."""


def check_revision(revision: str) -> str:
    """A Hub revision (branch, tag, commit or refs/pr/N) as git allows it; path-like ones ('..', '/x') are refused."""
    parts = revision.split('/')
    if (len(revision) > 255 or any(not _REF_PART.fullmatch(p) or p.endswith(('.lock', '.')) for p in parts)
            or '..' in revision):
        raise BadInputError(
            f"Invalid revision '{display(revision)}': a revision is a branch, tag or commit name of letters, digits, "
            "'.', '_', '-' and '/' separators (no '..', no empty or dot-led parts), e.g. main, v1.0, refs/pr/1.")
    return revision


def check_hub_target(repo_id: str, revision: Optional[str] = None) -> None:
    """Refuse an invalid repo id or revision before any request is made (pulls and pushes alike)."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except ValueError as e:
        raise BadInputError(f"Invalid Hub repo id '{display(repo_id)}': {e}") from None
    if revision is not None:
        check_revision(revision)


def parse_hub_ref(text: str) -> Tuple[str, Optional[str]]:
    """The repo id and revision of 'org/name[@revision]' (what follows hf-hub:), refusing anything else by name."""
    repo_id, sep, revision = text.partition('@')
    if repo_id.count('/') != 1 or repo_id.startswith(('.', '/', '~')) or '\\' in repo_id:
        raise BadInputError(f"'{HUB_PREFIX}{display(text)}': after {HUB_PREFIX} comes a Hub repo id, ORG/NAME with an "
                            'optional @REVISION, never a local path (give a folder without the prefix).')
    check_hub_target(repo_id, revision if sep else None)
    return repo_id, revision if sep else None


def _cache_root(cache_dir: Optional[str] = None) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir or constants.HF_HUB_CACHE).resolve()


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _checked(path: Path, repo_id: str, what: str, cache_dir: Optional[str] = None) -> Path:
    """path if it (and what it links to) lies inside the Hub cache; else what lies outside is removed and refused."""
    root, link = _cache_root(cache_dir), Path(path)
    real = link.resolve()
    if _inside(real, root):
        return link
    if real.is_file():
        real.unlink()
    if link.is_symlink() and _inside(link.parent.resolve(), root):
        # the client named the blob and its lock by the server's ETag, at one depth under the cache each
        # (REPO/blobs/ETAG, .locks/REPO/ETAG.lock): the same relative path leads from one to the other
        repo = link.parent.resolve().relative_to(root).parts[0]
        etag = os.path.relpath(real, root / repo / 'blobs')
        lock = Path(os.path.normpath(root / '.locks' / repo / f'{etag}.lock'))
        if not _inside(lock, root):
            lock.unlink(missing_ok=True)
        link.unlink()
    raise HubFileError(f'{repo_id}: the Hub served {what} under a name (its ETag) that stored it outside the cache, '
                       f'at {display(real)}; it was removed and is not used.')


def hub_file(repo_id: str, filename: str, revision: Optional[str] = None, repo_type: str = 'model',
             cache_dir: Optional[str] = None) -> Path:
    """A file of a Hub repo, downloaded (or cached) and checked to lie inside the Hub cache (or cache_dir)."""
    from huggingface_hub import hf_hub_download

    with hub_when_reachable(f'{repo_id}: {filename}'):
        path = Path(hf_hub_download(repo_id, filename, revision=revision, repo_type=repo_type, cache_dir=cache_dir))
    return _checked(path, repo_id, filename, cache_dir)


def hub_snapshot(repo_id: str, revision: Optional[str] = None, repo_type: str = 'dataset') -> Path:
    """The files of a Hub repo at a revision, downloaded (or cached), each checked to lie inside the Hub cache."""
    from huggingface_hub import snapshot_download

    with hub_when_reachable(repo_id):
        folder = Path(snapshot_download(repo_id, revision=revision, repo_type=repo_type))
    for path in sorted(folder.rglob('*')):
        if path.is_file() or path.is_symlink():
            _checked(path, repo_id, display(path.relative_to(folder)))
    return _checked(folder, repo_id, 'its snapshot')


def hub_content(name: str) -> Path:
    """A card template or published model repo of the repository's hub/ folder, where the install (or checkout) has it."""
    return Path(str(importlib.resources.files(HUB_CONTENT) / name))


def hub_unreachable() -> Optional[str]:
    """Why the Hub cannot serve weights now (HF_HUB_OFFLINE, or no answer to one request), or None when it can."""
    from huggingface_hub import constants, get_session

    answered = _BLOCK_ANSWER.get()
    if answered is not None:  # inside a hub_when_reachable block, which asked already
        return answered[0]
    if constants.HF_HUB_OFFLINE:
        return 'HF_HUB_OFFLINE is set'
    try:  # one request, no retries: huggingface_hub would retry a dead network for about a minute per file
        get_session().head(constants.ENDPOINT, timeout=5)
    except Exception as e:  # noqa: BLE001 - any transport failure means the same: not reachable
        return f'{constants.ENDPOINT} cannot be reached ({type(e).__name__})'
    return None


@contextlib.contextmanager
def hub_cache_only() -> Iterator[None]:
    """huggingface_hub serves files from its cache only and asks the network nothing, as with HF_HUB_OFFLINE=1."""
    from huggingface_hub import constants

    before, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


@contextlib.contextmanager
def hub_when_reachable(what: str) -> Iterator[None]:
    """Run the block against the Hub if it answers now, else against the Hub cache alone (as HF_HUB_OFFLINE=1); a
    file the cache lacks then ends it with one LocalEntryNotFoundError (exit 1) that names `what` and says why."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    if _BLOCK_ANSWER.get() is not None:  # inside another block: its answer holds, and it says why on a cache miss
        yield
        return
    why = hub_unreachable()
    token = _BLOCK_ANSWER.set((why,))
    try:
        if why is None:
            yield
            return
        with hub_cache_only():
            try:
                yield
            except LocalEntryNotFoundError as e:
                raise LocalEntryNotFoundError(f'{what}: {why}, and the Hub cache does not hold it; pull it once '
                                              'where the Hub answers, and it then loads offline.') from e
    finally:
        _BLOCK_ANSWER.reset(token)
