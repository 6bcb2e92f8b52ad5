"""Model cards for MA-Net checkpoints: timm-style YAML metadata and a body that says what the model is.

The card is rebuilt from what a training run leaves (``magsd_timm.run_records``): the checkpoint
folder (config.json + model.safetensors), ``args.yaml`` and ``eval_best.json`` beside it.
"""
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, Dict, List, Optional, Tuple

import torch
from huggingface_hub import DatasetCard, EvalResult, ModelCardData
from timm.models import resolve_pretrained_cfg

from ..data.build import KNOWN_SOURCES
from ..evaluation.metrics import metrics_markdown
from ..models.complexity import count_macs, count_parameters
from ..models.config import temperature_of
from ..models.lung_detector import DETECTOR_FILES
from ..run_records import TrainingRun
from ..utils.hub_files import HUB_PREFIX, hub_content, hub_file, parse_hub_ref
from ..utils.tables import markdown_table, shown_command, shown_path

__all__ = ['MODEL_TAGS', 'Publication', 'render_model_card']

MODEL_TAGS = ['image-classification', 'timm', 'magsd', 'medical-imaging', 'chest-x-ray']

METHOD_TEXT = {
    'magsd': (
        'MAG-SD objective: for every image the network predicts classes and attention maps; three harder '
        'views are made from the maps (attention mixup, dimming, patching). The loss is the cross-entropy of '
        'the raw prediction against the label, plus one soft distance (mean absolute difference) per view '
        'between that view\'s probabilities and the raw prediction\'s (detached; a smoothed one-hot of the label '
        'where the raw prediction is wrong or below 0.7 confidence). The views enter the loss only through '
        'these distances: their cross-entropies are reported, not optimised.'),
    'baseline': 'Cross-entropy on the raw images (the baseline of the MAG-SD ablations).',
}


def _section(markdown: str, title: str) -> Optional[str]:
    """The text of a '## title...' section of a markdown document."""
    match = re.search(rf'^## {re.escape(title)}[^\n]*\n(.*?)(?=^## |\Z)', markdown, flags=re.M | re.S)
    return match.group(1).strip() if match else None


def _dataset(data: Optional[str]) -> Dict[str, Optional[str]]:
    """The Hub id (if any), description and known biases of the data a run was trained on."""
    if not data:
        reference, licence, note = KNOWN_SOURCES['kermany16']
        return dict(hub_id=None, name='kermany16', text=(
            f'the 16-image sample bundled with magsd-timm ({reference}, licence {licence}): far too small to '
            'train a useful model; it shows the pipeline works.'),
            biases=f'{note}; two classes only (normal, bacterial pneumonia).', provenance=f'- {reference} ({licence})')
    if data.startswith(HUB_PREFIX):
        hub_id = data[len(HUB_PREFIX):]
        try:  # the Hub's card, never a local folder of the same name
            repo_id, revision = parse_hub_ref(hub_id)
            card = DatasetCard.load(hub_file(repo_id, 'README.md', revision, repo_type='dataset')).text
        except Exception:  # noqa: BLE001 - the card is descriptive; the push does not depend on it
            card = ''
        return dict(hub_id=hub_id, name=hub_id, text=f'[{hub_id}](https://huggingface.co/datasets/{hub_id})',
                    biases=_section(card, 'Known biases') or 'See the dataset card.',
                    provenance=_section(card, 'Provenance') or 'See the dataset card.')
    folder = Path(data)
    card = DatasetCard.load(folder / 'README.md') if (folder / 'README.md').is_file() else None
    name = (card.data.pretty_name if card else None) or folder.name
    shown = ' '.join(str(name).replace('`', "'").split())  # one line of code text, whatever the name holds
    return dict(hub_id=None, name=name, text=f'`{shown}` (a local dataset, prepared with magsd-timm)' if card else
                f'`{shown}` (a local image folder)',
                biases=(card and _section(card.text, 'Known biases')) or 'Not documented.',
                provenance=(card and _section(card.text, 'Provenance')) or 'Not documented.')


@dataclass
class Publication:
    """What a published tag's card leads with: how the recipe did on COVID-19 sources it never saw (the cxr suite's
    cxr-unseen-SOURCE.json of each source) and this model's own operating point (hub.publish.operating_point_of)."""
    tag: str  # magsd_<arch>.<tag>
    unseen: List[Dict[str, Any]]
    operating_point: Dict[str, Any]
    train_counts: Dict[str, Dict[str, int]]  # films of the training split per class and source


def _cell(rate: Optional[Dict[str, Any]]) -> str:
    """A rate over seeds as the card shows it: the seed mean and its 95% interval over patients."""
    if not rate:
        return 'n/a'
    return f"{statistics.mean(rate['per_seed']):.3f} [{rate['interval'][0]:.3f}, {rate['interval'][1]:.3f}]"


def _publication_section(pub: Publication, method: str) -> str:
    """The card's first section: results on unseen COVID-19 sources per source, then this model's operating point."""
    rows, sources = [], sorted({s for summary in pub.unseen for s in summary['normal_films']})
    for summary in pub.unseen:
        result = summary['methods'][method]
        seeds = len(result['auroc']['per_seed']) if result['auroc'] else 0
        rows.append([summary['source'], summary['unseen_films'], seeds, _cell(result['auroc']),
                     _cell(result['sensitivity']), *(_cell(result['specificity'].get(s)) for s in sources),
                     f"{_cell(result['probe_specificity'])} ({result['probe_specificity']['films']} films)"
                     if result['probe_specificity'] else 'n/a'])
    table = markdown_table(['COVID-19 source never seen', 'its COVID-19 films', 'seeds', 'AUROC, COVID-19 vs normal',
                            'sensitivity at the operating point', *(f'specificity: {s} normals' for s in sources),
                            'specificity: probe'], rows)
    point = pub.operating_point
    test_rows = [[group, values['films'], f"{values['rate']:.3f}"] for group, values in point['test'].items()]
    sources_trained = sorted({s for counts in pub.train_counts.values() for s in counts})
    counts = markdown_table(['class', *sources_trained], [[c, *(pub.train_counts[c].get(s, 0) for s in sources_trained)]
                                                          for c in sorted(pub.train_counts)])
    weak = [f'{group}: {values["rate"]:.2f} of {values["films"]} films called right at the operating point'
            for group, values in point['test'].items() if values['rate'] < 0.8]
    for summary in pub.unseen:  # what each unseen source's films and the probe's say, where they fall short
        result, unseen = summary['methods'][method], f"{summary['source']}'s COVID-19 unseen"
        weak += [f'normal films of {src} with {unseen}: specificity {statistics.mean(rate["per_seed"]):.2f}'
                 for src, rate in result['specificity'].items() if statistics.mean(rate['per_seed']) < 0.8]
        sensitivity, probe = statistics.mean(result['sensitivity']['per_seed']), result.get('probe_specificity')
        if sensitivity < summary['operating_sensitivity']:
            weak.append(f"{summary['source']}'s COVID-19 films, unseen: sensitivity {sensitivity:.2f} at the operating "
                        f"point chosen for {summary['operating_sensitivity']:.2f} on validation")
        probe_rate = statistics.mean(probe['per_seed']) if probe else None
        if probe_rate is not None and probe_rate < 0.8:
            weak.append(f"the probe's normal films from other hospitals ({probe['films']}), with {unseen}: "
                        f"specificity {probe_rate:.2f}")
    failures = '\n'.join(f'- {line}' for line in weak) or '- none below 0.80 among the groups measured above.'
    commands = '\n'.join(sorted({shown_command(summary['command']) for summary in pub.unseen if summary.get('command')}))
    commands = commands or '(not recorded)'
    known = ''.join(text for source, text in (
        ('kermany', "every child's film in the training data is Kermany's (age 1-5, one hospital); "),
        ('covid19-radiography', "every adult normal film is the COVID-19 Radiography Database's, from RSNA (NIH, one "
                                'hospital system); ')) if source in sources_trained)
    licence = ('Part of the ieee8023 collection is published under non-commercial licences (CC BY-NC-SA and '
               'others, per image): **these weights are for non-commercial research only.** ' if 'ieee8023' in
               sources_trained else '') + 'Each part of the training data keeps its licence (Data and known biases).'

    temperature = point['temperature']
    scale = (f', P being the softmax of the logits divided by the temperature {temperature:.4f} that config.json '
             'holds (as `magsd predict` reports it)' if temperature != 1.0 else '')

    return f"""## Results on COVID-19 sources it never saw

What matters for another hospital: for each COVID-19 source, the same recipe was trained (seeds as
given) with none of that source's COVID-19 films in training or validation, then scored on all of
them against the normal films of the test split (held-out patients) and on a probe of normal films
held out entirely. AUROC: COVID-19 against normal; the operating point: P(COVID-19) at which
{pub.unseen[0]['operating_sensitivity']:.2f} of the validation split's COVID-19 films are called COVID-19,
chosen per run. Mean over seeds, [95% bootstrap interval over patients]. This model itself was trained
on every film, those sources included: the figures describe its recipe, not this file on those films.

{table}

**This model's operating point:** call a film COVID-19 when P(COVID-19) >= {point['threshold']:.4f}{scale}
(the COVID-19 sensitivity {point['sensitivity']:.2f} point of its validation split, {point['validation_films']}
COVID-19 films). On its test split (patients it never saw, sources it did) that point gives:

{markdown_table(['films', 'count', 'share called right'], test_rows)}

("COVID-19" rows: share called COVID-19; normal rows: share not called COVID-19.)

**Known failure modes, measured** (below 0.80 called right):

{failures}

Not measured: {known}a film from another hospital, age group or device is outside what was measured;
the shortcut report below (lungs hidden against border hidden) shows how much of each answer rests on
the lungs.

**Training split** (films per class and source):

{counts}

{licence}

The results above come from:

```
{commands}
```

"""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _eval_results(metrics: Dict[str, Any], split: str, dataset: Dict[str, Optional[str]]) -> List[EvalResult]:
    common = dict(task_type='image-classification', dataset_type=dataset['hub_id'] or dataset['name'],
                  dataset_name=dataset['name'], dataset_split=split)
    results = []
    if _finite(metrics.get('accuracy')):
        results.append(EvalResult(metric_type='accuracy', metric_value=round(metrics['accuracy'], 4), **common))
    if _finite(metrics.get('macro_f1')):
        results.append(EvalResult(metric_type='f1', metric_name='macro F1', metric_config='macro',
                                  metric_value=round(metrics['macro_f1'], 4), **common))
    return results


def _evaluation(run: TrainingRun, class_names: List[str]) -> str:
    parts = []
    if run.test_report:
        from ..evaluation.report import report_markdown  # the data and inference code, only where a test report exists

        report = run.test_report
        data = shown_path(report.get('data', 'its data'))
        parts.append(f"### Test split\n\n`magsd evaluate` of this checkpoint on the {report.get('split', 'test')} "
                     f"split of {data}:\n\n{report_markdown(report, class_names, False)}")
    if run.metrics:
        parts.append(f"### Validation split\n\nThe split that chose the checkpoint (epoch {run.epoch}), "
                     f"{run.metrics.get('num_samples')} images, so an optimistic estimate (n/a: undefined on these "
                     f"images).\n\n{metrics_markdown(run.metrics, class_names)}")
    if parts and not run.test_report:  # the shortcut measures come with a test report: say so, never drop them silently
        parts.append('No test report yet, so no shortcut measures (accuracy per source, answers with the lungs or the '
                     'border hidden): `magsd evaluate RUN/best DATA --output RUN/test` writes them, and this card then '
                     'shows them beside the accuracy.')
    return '\n\n'.join(parts) or 'No evaluation was recorded with this checkpoint.'


def _base_model(backbone: str) -> Optional[str]:
    """The Hub id of the weights a backbone name (with its tag) stands for, or None where timm knows none."""
    try:
        return resolve_pretrained_cfg(backbone).hf_hub_id
    except RuntimeError:  # a tag this timm does not know (the config is read as untrusted): no base model to name
        return None


def _backbone_init(base_model: Optional[str], training: Any) -> str:
    """The card's sentence on the backbone's starting weights, with the source the run recorded for them."""
    if not base_model:
        return 'random (no pretrained backbone)'
    source = training.get('pretrained_weights') if isinstance(training, dict) else None
    return f'ImageNet weights `{base_model}`' + (f", loaded from {' '.join(str(source).split())}" if source else '')


def _preprocessing(config: Dict[str, Any], repo_id: str) -> Tuple[str, str]:
    """The card's preprocessing sentence and its code line: the whole film, or the film cut to its lungs by the
    detector the repo carries."""
    steps = 'resized whole to the image size (aspect not kept), CLAHE (clip 4.0, 4 x 4 tiles)'
    whole = 'transform = create_transform(model)  # the trainer\'s evaluation steps, CLAHE included'
    record = config.get('lung_crop')
    if not record:
        return f'each film {steps}', whole
    detector = record['detector']
    sentence = (f"each film first cut to its lungs by the lung detector in this repo ({', '.join(DETECTOR_FILES)}: "
                f"`{detector['architecture']}` at {detector['img_size']} px, the predicted box widened by "
                f"{detector['margin']:g} of the film on each side), then {steps}. Predictions on whole films would be "
                'about other images: `magsd predict` cuts them, and so does the code below')
    code = ("from magsd_timm.hub import checkpoint_config, load_lung_crop\n"
            f"crop = load_lung_crop('hf-hub:{repo_id}', checkpoint_config('hf-hub:{repo_id}'))  # this repo's "
            "lung detector\ntransform = create_transform(model, crop=crop)")
    return sentence, code


def render_model_card(model: torch.nn.Module, run: TrainingRun, repo_id: str, license: str = 'apache-2.0',
                      dataset_id: Optional[str] = None, publication: Optional[Publication] = None) -> str:
    """The README.md of a Hub model repo: timm-style YAML metadata, then the card's body; a published tag's card
    leads with its results on unseen sources."""
    config = json.loads((run.checkpoint / 'config.json').read_text())  # what the repo's users get
    cfg = config['pretrained_cfg']
    class_names = list(config.get('label_names') or [str(i) for i in range(config['num_classes'])])
    dataset = _dataset(run.args.get('data'))
    if dataset_id:
        dataset['hub_id'] = dataset_id
    tag = cfg.get('tag')  # a baseline is its own backbone: the architecture with the weights' tag it started from
    backbone = getattr(model, 'backbone_name', None) or config['architecture'] + (f'.{tag}' if tag else '')
    base_model = _base_model(backbone) if run.args.get('pretrained') else None
    name = repo_id.split('/')[-1]
    metadata = ModelCardData(
        library_name='timm', license=license, tags=MODEL_TAGS, pipeline_tag='image-classification',
        datasets=[dataset['hub_id'] or dataset['name']], base_model=base_model, model_name=name,
        eval_results=_eval_results(*((run.test_report['metrics'], 'test') if run.test_report
                                     else (run.metrics or {}, 'validation')), dataset=dataset) or None,
    )
    args = run.args
    values = dict(
        name=name, repo_id=repo_id, backbone=backbone, architecture=config['architecture'],
        method='MAG-SD objective' if args.get('method', 'magsd') == 'magsd' else 'cross-entropy baseline',
        method_text=METHOD_TEXT.get(args.get('method', 'magsd'), ''), class_list=', '.join(class_names),
        num_maps=getattr(model, 'num_maps', '?'), attn_levels=tuple(getattr(model, 'attn_levels', ())),
        params=f'{count_parameters(model) / 1e6:.2f}', gmacs=f"{count_macs(model, cfg['input_size']) / 1e9:.2f}",
        input_size=' x '.join(map(str, cfg['input_size'])), mean=tuple(cfg['mean']), std=tuple(cfg['std']),
        backbone_init=_backbone_init(base_model, config.get('training')),
        dataset=dataset['text'], biases=dataset['biases'], provenance=dataset['provenance'],
        command=shown_command(run.command) if run.command else 'not recorded',
        args_table=markdown_table(['argument', 'value'], [[k, shown_path(v) if isinstance(v, str) else v]
                                                          for k, v in args.items()] or [['(not recorded)', '']]),
        evaluation=_evaluation(run, class_names),
        lead=_publication_section(publication, args.get('method', 'magsd') == 'magsd' and 'MAG-SD' or 'baseline')
        if publication else '',
        load_line=(f"model = timm.create_model('{publication.tag}', pretrained=True).eval()  # the Hub, or offline the "
                   "copy magsd-timm ships" if publication else
                   f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()"),
    )
    temperature = temperature_of(config)
    values['probability_line'] = (f'probabilities = (model(image) / {temperature:.4f}).softmax(-1)[0]  # the calibrated '
                                  'temperature config.json holds, as magsd predict applies it' if temperature != 1.0
                                  else 'probabilities = model(image).softmax(-1)[0]')
    values['load_name'] = publication.tag if publication else repo_id
    values['preprocessing'], values['transform_code'] = _preprocessing(config, repo_id)
    body = Template(hub_content('model_card.md').read_text())
    return f'---\n{metadata.to_yaml()}\n---\n\n{body.substitute(values)}'
