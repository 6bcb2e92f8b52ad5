"""A training run made a published tag: the card's results on unseen sources, its operating point, its entry.

``magsd-hub push-model RUN ORG/NAME --tag magsd_<arch>.<tag> --unseen-results cxr-unseen-*.json``
stages (or pushes) the repo with a card that leads with how the run's recipe did on COVID-19 sources
it never saw (the cxr suite's summaries, checked to be of this recipe) and with the model's own
operating point, chosen on its validation split and read on its test split. ``hub_weights_entry``
is the ``HUB_WEIGHTS`` entry that makes the tag load (models/magsd.py, models/published.py).
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch

from ..errors import BadInputError, display
from ..models.weights import SAFE_WEIGHTS
from ..run_records import OPERATIONAL_ARGS, TrainingRun, setting_differences
from ..utils.digest import file_sha256
from .cards import Publication

__all__ = ['OPERATING_SENSITIVITY', 'hub_weights_entry', 'operating_point_of', 'publication', 'unseen_results']

OPERATING_SENSITIVITY = 0.90  # the card's operating point: this share of validation's COVID-19 films called COVID-19
# what a suite run may differ in from the published run and still be the same recipe
_NOT_RECIPE = (*OPERATIONAL_ARGS, 'seed', 'exclude_sources', 'data_sha256', 'crop_lungs_sha256', 'method')


def unseen_results(files: Sequence[Path], run: TrainingRun) -> List[Dict[str, Any]]:
    """The cxr suite's unseen-source summaries, each refused unless every run in it used the published run's recipe."""
    summaries = []
    for file in files:
        try:
            summary = json.loads(Path(file).read_text())
            runs = [r for r in summary['runs'] if r.get('method') == run.args.get('method')]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise BadInputError(f'--unseen-results {display(file)}: not a summary of the cxr suite ({e}).') from e
        recipe = {k: v for k, v in run.args.items() if k not in _NOT_RECIPE}
        for suite_run in runs:
            changed = setting_differences({k: v for k, v in suite_run.items() if k not in _NOT_RECIPE}, recipe)
            if changed:
                raise BadInputError(f"--unseen-results {display(file)}: its runs used another recipe than the run "
                                    f"published ({'; '.join(changed)} (suite then, published now)): a card must report "
                                    'its own recipe.')
        if not runs:
            raise BadInputError(f"--unseen-results {display(file)}: holds no {run.args.get('method')} run.")
        summaries.append(summary)
    return summaries


def operating_point_of(model: torch.nn.Module, run: TrainingRun, transform: Any, temperature: float = 1.0,
                       sensitivity: float = OPERATING_SENSITIVITY) -> Dict[str, Any]:
    """The model's COVID-19 operating point on its probabilities (softmax of the logits over the checkpoint's
    temperature, as magsd predict reports them), chosen on the validation split it was trained with (its exclusions
    applied) and read on the test split: the threshold and the share called right per class and source."""
    from ..data import open_dataset
    from ..evaluation.inference import probabilities
    from ..evaluation.operating_point import films_by_source, rate_at, threshold_at_sensitivity
    from ..evaluation.report import align_labels, predict_dataset

    names = list(model.pretrained_cfg['label_names'])
    if 'COVID-19' not in names or 'normal' not in names:
        raise BadInputError(f"a published tag's card states a COVID-19 operating point; this model's classes are "
                            f"{', '.join(names)}.")
    covid = names.index('COVID-19')
    scored = {}
    for split in ('validation', 'test'):
        dataset = open_dataset(run.args.get('data'), split, transform, seed=run.args.get('seed', 0))
        if split == 'validation' and run.args.get('exclude_sources'):
            dataset = dataset.without_sources(run.args['exclude_sources'])
        dataset, _ = dataset.readable()
        logits, labels = predict_dataset(model, dataset, batch_size=32)
        scored[split] = (probabilities(logits, temperature), align_labels(names, dataset.class_names)[labels], dataset)
    train = open_dataset(run.args.get('data'), 'train', seed=run.args.get('seed', 0))
    if run.args.get('exclude_sources'):
        train = train.without_sources(run.args['exclude_sources'])
    counts = {name: {source: len(films) for source, films in
                     films_by_source(train.labels(), train.column('source'), k).items()}
              for k, name in enumerate(train.class_names)}
    probs, labels, _ = scored['validation']
    threshold = threshold_at_sensitivity(probs, labels, covid, sensitivity)
    probs, labels, dataset = scored['test']
    test = {}
    for label in ('COVID-19', 'normal'):
        for source, films in films_by_source(labels.tolist(), dataset.column('source'), names.index(label)).items():
            hits = rate_at(probs, films, covid, threshold, positive=label == 'COVID-19')
            test[f'{label}, {source}'] = dict(films=len(films), rate=float(hits.double().mean()))
    return dict(threshold=threshold, sensitivity=sensitivity, temperature=temperature,
                validation_films=int((scored['validation'][1] == covid).sum()), test=test,
                train_counts={name: by_source for name, by_source in counts.items() if by_source})


def publication(model: torch.nn.Module, run: TrainingRun, transform: Any, tag: str,
                unseen_files: Sequence[Path], temperature: float = 1.0) -> Publication:
    """What a published tag's card leads with, from the suite's summaries and the model itself."""
    import timm

    arch = tag.split('.')[0]
    if '.' not in tag or not timm.is_model(arch) or model.pretrained_cfg.get('architecture', arch) != arch:
        raise BadInputError(f"--tag {tag}: a published tag is the model's architecture and a tag, "
                            f"{model.pretrained_cfg.get('architecture')}.<tag>.")
    if not unseen_files:
        raise BadInputError(f'--tag {tag}: a published tag leads its card with the results of its recipe on unseen '
                            'sources: give --unseen-results (the cxr suite\'s cxr-unseen-SOURCE.json).')
    point = operating_point_of(model, run, transform, temperature)
    return Publication(tag, unseen_results(unseen_files, run), point, point.pop('train_counts'))


def hub_weights_entry(folder: Path, repo_id: str, license: str) -> Dict[str, Any]:
    """The HUB_WEIGHTS entry of a staged published repo: timm's cfg with the weights' licence (the code's is
    Apache-2.0; the weights keep their data's), the Hub repo, the folder and the SHA-256."""
    config = json.loads((folder / 'config.json').read_text())
    cfg = {k: v for k, v in config['pretrained_cfg'].items() if k not in ('architecture', 'tag', 'custom_load')}
    return dict(cfg, license=license, label_names=config['label_names'], num_classes=config['num_classes'],
                hf_hub_id=repo_id, folder=folder.name, sha256=file_sha256(folder / SAFE_WEIGHTS))
