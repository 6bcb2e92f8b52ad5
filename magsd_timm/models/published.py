"""Chest X-ray models the project publishes: each a Hub model repo, and the same files inside the package.

Each entry of ``HUB_WEIGHTS`` (models/magsd.py) is a published tag, ``magsd_<arch>.<tag>``: timm's
pretrained cfg of the checkpoint (its Hub repo in ``hf_hub_id``, classes, input size, statistics)
plus ``folder``, the folder of the repository's ``hub/`` (installed as ``magsd_timm.hub_content``) that holds
the repo's files, and ``sha256``, the SHA-256 of its ``model.safetensors``.

Where the files come from follows the rule of the offline ImageNet weights
(``offline_weights.hub_or_package``): the Hub when it answers; with ``HF_HUB_OFFLINE=1``, when it
does not answer, or when it answers without the file, the package's copy. One line on stderr names
the source. Weights from either place must have the recorded SHA-256, or they are refused: a Hub repo
changed since the entry was written, or a damaged install, never loads as the published model.
"""
from pathlib import Path
from typing import Any, Dict, Tuple

from ..errors import BadInputError, display
from ..utils.digest import file_sha256
from ..utils.hub_files import hub_content, hub_file, parse_hub_ref
from .offline_weights import hub_or_package

__all__ = ['PUBLISHED_KEYS', 'PublishedWeightsError', 'packaged_folder', 'published_file']

PUBLISHED_KEYS = ('folder', 'sha256')  # keys of a HUB_WEIGHTS entry that are the project's, not timm's cfg
WEIGHTS = 'model.safetensors'


class PublishedWeightsError(BadInputError):
    """A published tag's file is missing, or is not the published one (another SHA-256)."""


def packaged_folder(entry: Dict[str, Any]) -> Path:
    """The folder of the installed package (or the repository) that holds a published tag's files."""
    return hub_content(entry['folder'])


def published_file(name: str, entry: Dict[str, Any], filename: str = WEIGHTS) -> Tuple[Path, str]:
    """A file of the published tag `name` (its weights, config.json), from the Hub or the package, and a sentence
    naming where from; the weights are checked against the recorded SHA-256."""
    repo_id, revision = parse_hub_ref(entry['hf_hub_id'])

    def from_hub() -> Tuple[Path, str]:
        return Path(hub_file(repo_id, filename, revision)), f"the Hub ({entry['hf_hub_id']})"

    def from_package(why: str) -> Tuple[Path, str]:
        path = packaged_folder(entry) / filename
        if not path.is_file():
            raise PublishedWeightsError(
                f'{name}: {why}, and the copy the package ships, {display(path)}, is missing: reinstall magsd-timm '
                '(pip install --force-reinstall magsd-timm), or let it reach the Hub.')
        return path, f'the installed package, {display(path.parent)} ({why})'

    path, source = hub_or_package(from_hub, from_package)
    if filename == WEIGHTS:
        digest = file_sha256(path)
        if digest != entry['sha256']:
            raise PublishedWeightsError(
                f"{name}: {display(path)} from {source} is not the published weights (SHA-256 {digest[:12]}..., "
                f"recorded {entry['sha256'][:12]}...): it is damaged or was replaced; reinstall magsd-timm, or "
                'clear it from the Hub cache.')
    return path, source
