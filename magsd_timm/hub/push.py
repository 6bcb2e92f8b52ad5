"""Push a trained checkpoint or a prepared dataset to the Hugging Face Hub, in one commit.

Each push first stages the exact folder the repo receives (a dry run stops there and keeps it), then
uploads it with one ``upload_folder`` call: one commit, so a push that fails leaves the repo at its
previous commit and can simply be run again. The local training output or dataset is only read.
"""
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Union

from huggingface_hub import DatasetCard, HfApi
from huggingface_hub.errors import HfHubHTTPError, HTTPError

from ..errors import BadInputError, display
from ..models.config import check_checkpoint_config, temperature_of
from ..models.lung_detector import DETECTOR_FILES
from ..models.weights import SAFE_WEIGHTS
from ..run_records import find_run
from ..utils.hub_files import check_hub_target
from .cards import render_model_card
from .pull import load, load_lung_crop

__all__ = ['PushError', 'push_dataset', 'push_model', 'stage_dataset', 'stage_model']

CONFIG_KEYS = ('architecture', 'num_classes', 'label_names', 'model_args', 'pretrained_cfg')
DATASET_FILES = ('splits.json', 'skipped.json')
MAX_SHARD_BYTES = 500 * 2 ** 20


class PushError(OSError):
    """The Hub refused or failed a push, or could not be reached; the repo is still at its previous commit."""


def _new_folder(folder: Path) -> Path:
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"'{display(folder)}' exists and is not empty: stage into a new folder.")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def stage_model(output_dir: Union[str, Path], folder: Union[str, Path], repo_id: str,
                license: str = 'apache-2.0', dataset_id: Optional[str] = None, tag: Optional[str] = None,
                unseen_results: Sequence[Path] = ()) -> Path:
    """Write what push_model uploads: model.safetensors, config.json, the model card (README.md), and the lung
    detector of a model that cuts films to their lungs; for a published tag (magsd_timm/hub/publish.py) also the test report,
    and a card that leads with the recipe's results on unseen sources and the model's operating point."""
    run = find_run(output_dir)
    checkpoint = run.checkpoint
    if not (checkpoint / SAFE_WEIGHTS).is_file():
        found = sorted(p.name for p in checkpoint.iterdir() if p.suffix in ('.bin', '.pth', '.pt', '.ckpt'))
        raise FileNotFoundError(
            f"'{checkpoint}' has no {SAFE_WEIGHTS}" + (f' (only pickle weights: {", ".join(found)})' if found else '')
            + ': only safetensors weights are pushed. Save the model with '
              'timm.models.save_for_hf(model, folder, safe_serialization=True).')
    config_path = checkpoint / 'config.json'
    config = check_checkpoint_config(json.loads(config_path.read_text()), display(config_path))
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise BadInputError(f"'{display(config_path)}' lacks {', '.join(missing)}: save it with "
                            "timm.models.save_for_hf(..., model_config={'label_names': [...]}).")
    # rebuilding from the folder proves the repo will load: config, architecture and every tensor's shape
    model = load(f'local-dir:{checkpoint}', config=config).eval()
    crop = load_lung_crop(f'local-dir:{checkpoint}', config)  # a repo without its detector would answer wrongly
    published = None
    if tag is not None:
        if run.test_report is None:
            raise BadInputError(f'--tag {tag}: a published tag ships its test report: run magsd evaluate '
                                f'{display(checkpoint)} DATA --split test --output {display(checkpoint.parent / "test")} '
                                'first.')
        from ..data.transforms import build_transforms, resolve_cxr_data_config
        from .publish import publication

        published = publication(model, run, build_transforms(resolve_cxr_data_config(model), crop=crop), tag,
                                unseen_results, temperature_of(config))
    folder = _new_folder(folder)
    for file in (SAFE_WEIGHTS, 'config.json', *(DETECTOR_FILES if crop is not None else ())):
        shutil.copyfile(checkpoint / file, folder / file)
    if published is not None:
        for suffix in ('json', 'md'):
            shutil.copyfile(checkpoint.parent / 'test' / f'evaluation.{suffix}', folder / f'test_report.{suffix}')
    (folder / 'README.md').write_text(render_model_card(model, run, repo_id, license=license, dataset_id=dataset_id,
                                                        publication=published))
    return folder


def stage_dataset(prepared_dir: Union[str, Path], folder: Union[str, Path],
                  max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Write what push_dataset uploads: parquet shards per split, the dataset card, splits.json, skipped.json."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs

    from ..data.build import load_prepared

    prepared_dir = Path(prepared_dir)
    if not (prepared_dir / 'data' / 'dataset_dict.json').is_file() or not (prepared_dir / 'README.md').is_file():
        raise FileNotFoundError(
            f"'{prepared_dir}' is not a prepared dataset (data/ and README.md, as recipes/prepare_data.py writes it).")
    dataset = load_prepared(prepared_dir)
    folder = _new_folder(folder)
    (folder / 'data').mkdir()
    splits, download_size, features = SplitDict(), 0, None
    for split, part in dataset.items():
        shards = max(1, math.ceil(part.data.nbytes / max_shard_bytes))
        for index in range(shards):
            path = folder / 'data' / f'{split}-{index:05d}-of-{shards:05d}.parquet'
            part.shard(shards, index, contiguous=True).to_parquet(str(path))
            download_size += path.stat().st_size
        splits.add(SplitInfo(name=split, num_bytes=part.data.nbytes, num_examples=len(part)))
        features = part.features
    card = DatasetCard((prepared_dir / 'README.md').read_text())
    info = DatasetInfo(config_name='default', features=features, splits=splits, download_size=download_size,
                       dataset_size=sum(s.num_bytes for s in splits.values()))
    DatasetInfosDict({'default': info}).to_dataset_card_data(card.data)
    MetadataConfigs({'default': {'data_files': [{'split': s, 'path': f'data/{s}-*'} for s in dataset]}}
                    ).to_dataset_card_data(card.data)
    (folder / 'README.md').write_text(str(card))
    for name in DATASET_FILES:
        if (prepared_dir / name).is_file():
            shutil.copyfile(prepared_dir / name, folder / name)
    return folder


def _upload(folder: Path, repo_id: str, repo_type: str, private: Optional[bool], revision: Optional[str],
            commit_message: str, token: Optional[str], delete_patterns: Optional[List[str]] = None) -> str:
    """Create the repo (and branch) if needed, then commit the folder in one commit; the commit's URL."""
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if revision and revision != 'main':
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        commit = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type=repo_type, revision=revision,
                                   commit_message=commit_message, delete_patterns=delete_patterns)
    except (HfHubHTTPError, HTTPError, OSError) as e:
        if isinstance(e, HfHubHTTPError):
            status = e.response.status_code if e.response is not None else '?'
            reason = f'HTTP {status}: {e.server_message or str(e).splitlines()[0]}'
        else:  # the Hub could not be reached: connection refused or dropped, DNS, time-out
            reason = f'{type(e).__name__}: {" ".join(str(e).split()) or "no answer"}'
        raise PushError(
            f"Push to {repo_type} repo '{repo_id}' failed ({reason}). Nothing was committed: the repo is at its "
            f"previous commit and the local files are unchanged; run the same push again to retry.") from e
    return commit.commit_url


def push_model(output_dir: Union[str, Path], repo_id: str, private: Optional[bool] = None,
               revision: Optional[str] = None, commit_message: Optional[str] = None,
               dry_run: Optional[Union[str, Path]] = None, token: Optional[str] = None,
               license: str = 'apache-2.0', dataset_id: Optional[str] = None, tag: Optional[str] = None,
               unseen_results: Sequence[Path] = ()) -> str:
    """Push a training output's best checkpoint (or a checkpoint folder) as a timm model repo (a published tag's,
    with tag and the suite's unseen_results: see stage_model)."""
    check_hub_target(repo_id, revision)
    if dry_run is not None:
        return str(stage_model(output_dir, dry_run, repo_id, license, dataset_id, tag, unseen_results))
    with tempfile.TemporaryDirectory(prefix='magsd-push-') as tmp:
        folder = stage_model(output_dir, Path(tmp) / 'model', repo_id, license, dataset_id, tag, unseen_results)
        architecture = json.loads((folder / 'config.json').read_text())['architecture']
        return _upload(folder, repo_id, 'model', private, revision,
                       commit_message or f'Upload {architecture} trained with magsd-timm', token)


def push_dataset(prepared_dir: Union[str, Path], repo_id: str, private: Optional[bool] = None,
                 revision: Optional[str] = None, commit_message: Optional[str] = None,
                 dry_run: Optional[Union[str, Path]] = None, token: Optional[str] = None) -> str:
    """Push a dataset prepared by recipes/prepare_data.py, with its card; earlier data shards are replaced."""
    check_hub_target(repo_id, revision)
    if dry_run is not None:
        return str(stage_dataset(prepared_dir, dry_run))
    with tempfile.TemporaryDirectory(prefix='magsd-push-') as tmp:
        folder = stage_dataset(prepared_dir, Path(tmp) / 'dataset')
        return _upload(folder, repo_id, 'dataset', private, revision,
                       commit_message or 'Upload chest X-ray dataset prepared with magsd-timm', token,
                       delete_patterns=['data/*'])
