"""Suite `cxr`: MAG-SD against its plain backbone on real chest X-rays (--data, a folder of
recipes/prepare_data.py), one recipes/train.py run per method and seed: test-split metrics with
intervals over patients, where the maps look against --boxes, the shortcut measures; with
--holdout-source or --unseen-covid-source, a source (or its COVID-19 films) never seen in training,
scored at an operating point chosen on validation. Runs only when named.
"""
import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from magsd_timm.errors import BadInputError, display
from magsd_timm.utils.outputs import strict_json, write_text_atomic
from magsd_timm.utils.tables import markdown_table, shown_path

from .common import die_with_parent, mean_std, meets_or_misses

# the recommended recipe (docs/results.md): pretrained EfficientNet-Lite0, 3 stages frozen, 128 px, sized for 2 CPU
# cores; sampling balanced over class and source, which lifted the left-out source's AUROC (cutting films to the
# lungs did not, so it is not a default)
CXR_DEFAULTS = dict(model='magsd_efficientnet_lite0', epochs=8, img_size=128, batch_size=32)
CXR_TRAIN_ARGS = '--pretrained --freeze-stages 3 --balance class-source --epoch-samples 2000'  # the recommended recipe

TRAIN_RECIPE = Path(__file__).resolve().parents[1] / 'train.py'
CXR_TARGET = 0.02  # MAG-SD macro F1 over the baseline's, on the test split, mean over seeds
LOSO_TARGET = 0.80  # COVID-19 vs normal AUROC on a source left out of training, mean over seeds
MAP_TARGET = 0.7  # share of MA-Net's display map inside the lung boxes
UNSEEN_TARGET = 0.85  # COVID-19 vs normal AUROC on a source's COVID-19 films never seen, mean over seeds
SPECIFICITY_TARGET = 0.80  # adult normal films called normal at the operating point
OPERATING_SENSITIVITY = 0.90  # the operating point: this share of validation's COVID-19 films called COVID-19
UNSEEN_PROBE = 'ieee8023:normal'  # frontal adult 'No Finding' films of many hospitals, held out entirely
OPERATING = 'validation'  # the scored set that chooses the operating point (scored, not reported)


def _train_recipe():
    """recipes/train.py as a module: its parser and its record of arguments tell what a run would record."""
    import importlib.util

    spec = importlib.util.spec_from_file_location('magsd_train_recipe', TRAIN_RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_name(args: argparse.Namespace) -> str:
    """The name of the cxr suite's table (and summary): cxr, or with the source it tests unseen."""
    return f'cxr-unseen-{args.unseen_covid_source}' if args.unseen_covid_source else 'cxr'


def _held_out(args: argparse.Namespace) -> List[str]:
    """What every run of the invocation leaves out of training and validation (train.py --exclude-sources)."""
    if args.holdout_source:
        return [args.holdout_source]
    if args.unseen_covid_source:
        return [f'{args.unseen_covid_source}:COVID-19', *([args.probe] if _probe(args) else [])]
    return []


def _probe(args: argparse.Namespace) -> Optional[str]:
    """The probe films' SOURCE:CLASS, or None (no unseen-source test, --probe none, or no such film in the data:
    run_cxr_suite looks once, with _probe_in_data)."""
    return args.probe if args.unseen_covid_source and args.probe != 'none' else None


def _probe_in_data(args: argparse.Namespace) -> str:
    """--probe as the data holds it: 'none' when no film of the data is the probe's."""
    from magsd_timm.data import open_dataset

    if _probe(args) is None:
        return 'none'
    found = any(any(open_dataset(str(args.data), split).held_by([args.probe])) for split in ('train', 'validation', 'test'))
    return args.probe if found else 'none'


def _train_run(args: argparse.Namespace, method: str, seed: int) -> Path:
    """One training run of the cxr suite: reused only if its record has exactly these settings, else run (or resumed)."""
    import shlex
    import subprocess

    from magsd_timm.run_records import read_args, setting_differences
    from magsd_timm.train.run_folder import RunFolder

    without = (f'-without-{args.holdout_source}' if args.holdout_source else
               f'-unseen-{args.unseen_covid_source}' if args.unseen_covid_source else '')
    output = args.output_dir / 'cxr' / f'{method}{without}-seed{seed}'
    held = _held_out(args)
    train_args = ['--data', str(args.data), '--model', args.cxr_model, '--method', method, '--img-size',
                  str(args.cxr_img_size), '--epochs', str(args.cxr_epochs), '--batch-size', str(args.cxr_batch_size),
                  '--seed', str(seed), '--output', str(output), *(['--cpu'] if args.device == 'cpu' else []),
                  *(['--exclude-sources', *held] if held else []),
                  *shlex.split(args.train_args), *(shlex.split(args.magsd_args) if method == 'magsd' else [])]
    folder = RunFolder(output)
    if folder.has_results():  # train.py's own parser tells what the requested run would record
        recipe = _train_recipe()
        requested = recipe._parse_args(train_args)  # and the data it would train on, fingerprinted
        recorded = recipe.recorded_args(requested, *recipe.training_splits(requested))
        changed = setting_differences(read_args(output), recorded)
        if changed:
            raise BadInputError(f"{output} holds a run with other settings ({'; '.join(changed)}): remove it, or choose "
                                'another --output-dir; its results are not those of this comparison.')
        if (output / 'final' / 'config.json').is_file():
            return output
    command = [sys.executable, str(TRAIN_RECIPE), *train_args,
               *(['--resume'] if folder.has_results() else [])]
    print(f'cxr: {shlex.join(command)}', flush=True)
    if subprocess.run(command, preexec_fn=die_with_parent).returncode:
        raise RuntimeError(f'the cxr training run into {output} failed (its message is above); rerunning the suite '
                           'continues from its last checkpoint.')
    return output


def _scored_sets(model: torch.nn.Module, crop: Any, args: argparse.Namespace) -> Dict[str, Any]:
    """What the runs are scored on (films cut by crop, the run's lung detector, when it has one): the test split;
    leaving a source out, the test split without it ('in distribution') and every image of the held-out source,
    from all splits ('held out'); with an unseen COVID-19 source, the test split without what was held out, that
    source's COVID-19 films with the normal films of the test split, the probe, and the validation split that
    chooses the operating point."""
    from magsd_timm.data import open_dataset
    from magsd_timm.data.dataset import CXRDataset
    from magsd_timm.data.transforms import build_transforms, resolve_cxr_data_config

    transform = build_transforms(resolve_cxr_data_config(model), crop=crop)
    splits = {split: open_dataset(str(args.data), split, transform) for split in ('train', 'validation', 'test')}
    held = _held_out(args)
    if not held:
        return {'test': splits['test']}
    if args.holdout_source:
        return {'in distribution': splits['test'].without_sources(held),
                'held out': CXRDataset.joined([split.of_sources(held) for split in splits.values()])}
    probe = _probe(args)
    normals = [f'{source}:normal' for source in sorted({s for s in splits['test'].column('source') if s})
               if f'{source}:normal' != probe]
    sets = {'in distribution': splits['test'].without_sources(held),
            'unseen COVID-19': CXRDataset.joined([split.of_sources(held[:1]) for split in splits.values()]
                                                 + [splits['test'].of_sources(normals)])}
    if probe:
        sets['probe'] = CXRDataset.joined([split.of_sources([probe]) for split in splits.values()])
    sets[OPERATING] = splits['validation'].without_sources(held)
    return sets


def _run_probabilities(run: Path, args: argparse.Namespace) -> Tuple[Dict[str, Any], torch.nn.Module]:
    """The best checkpoint's probabilities (data class order), labels and images on each scored set, and the model."""
    from magsd_timm.evaluation.inference import probabilities
    from magsd_timm.evaluation.report import align_labels, predict_dataset
    from magsd_timm.hub import checkpoint_config, load, load_lung_crop

    best = f'local-dir:{run / "best"}'
    config = checkpoint_config(best)
    model = load(best, config=config).to(args.device)
    scored = {}
    for name, dataset in _scored_sets(model, load_lung_crop(best, config), args).items():
        dataset, unreadable = dataset.readable()
        for _, why in unreadable[:10]:  # both methods are scored on the same readable images, and it is said
            print(f'cxr: left out of the {name} images: {why}', flush=True)
        if not len(dataset):
            raise BadInputError(f'cxr: no readable {name} image in {display(shown_path(args.data))}.')
        logits, labels = predict_dataset(model, dataset, batch_size=32)
        order = align_labels(list(model.pretrained_cfg['label_names']), dataset.class_names)
        scored[name] = (probabilities(logits)[:, order], labels, dataset)
    return scored, model


def _seed_scores(results: Dict[str, Any], methods: Sequence[str], value: Callable[[Dict[str, Any]], float],
                 scored: str) -> List[str]:
    """Mean ± sd over seeds of value(metrics) on a scored set, per method."""
    return [mean_std([value(m) for m in results[name][scored]['per_seed']]) for name in methods]


def _covid_vs_normal(labels: torch.Tensor, class_names: Sequence[str]) -> Optional[torch.Tensor]:
    """The indices of the images labelled COVID-19 or normal, or None when either class is missing."""
    if not {'COVID-19', 'normal'} <= set(class_names):
        return None
    pair = [class_names.index('COVID-19'), class_names.index('normal')]
    if not all((labels == k).any() for k in pair):
        return None
    return torch.isin(labels, torch.tensor(pair)).nonzero()[:, 0]


def _method_results(runs: List[Tuple[Dict[str, Any], torch.nn.Module]], args: argparse.Namespace,
                    boxes: Any) -> Dict[str, Any]:
    """Per scored set: each seed's metrics, the seed mean's intervals, COVID-19 vs normal, and the hiding reports."""
    from magsd_timm.evaluation.metrics import bootstrap_intervals, classification_metrics
    from magsd_timm.evaluation.shortcuts import hiding_report

    out: Dict[str, Any] = {'models': [model for _, model in runs]}
    for scored in runs[0][0]:
        probs = [run[scored][0] for run, _ in runs]
        labels, dataset = runs[0][0][scored][1], runs[0][0][scored][2]
        names, groups = dataset.class_names, dataset.patient_groups()[0]
        if scored == OPERATING:  # it chooses the operating point: probabilities only
            out[scored] = dict(probs=probs, labels=labels, dataset=dataset, class_names=names)
            continue
        present = [names[k] for k in sorted(set(labels.tolist()))]
        kept = _covid_vs_normal(labels, names)
        out[scored] = dict(
            probs=probs, labels=labels, dataset=dataset, class_names=names,
            per_seed=[classification_metrics(p, labels, names, probabilities=True, present=present) for p in probs],
            intervals=bootstrap_intervals(probs, labels, names, groups, args.bootstrap, 0, present=present),
            hiding=[hiding_report(model, dataset, names, boxes) for _, model in runs])
        if kept is not None:
            two = ['COVID-19', 'normal']
            out[scored]['pair'] = dict(
                auroc=[classification_metrics(p[kept], labels[kept], names, True, present=two)['auroc']['COVID-19']
                       for p in probs],
                interval=bootstrap_intervals([p[kept] for p in probs], labels[kept], names,
                                             [groups[i] for i in kept.tolist()], args.bootstrap, 0,
                                             present=two)['auroc']['COVID-19'],
                num_images=len(kept))
    return out


def _reported(results: Dict[str, Any]) -> List[str]:
    """The scored sets a method's results report (not its models, not the set that only chooses the operating point)."""
    return [name for name in results if name not in ('models', OPERATING)]


def _operating_point(result: Dict[str, Any]) -> List[float]:
    """Per run, the P(COVID-19) at or above which OPERATING_SENSITIVITY of the set's COVID-19 films lie."""
    from magsd_timm.evaluation.operating_point import threshold_at_sensitivity

    covid = result['class_names'].index('COVID-19')
    try:
        return [threshold_at_sensitivity(p, result['labels'], covid, OPERATING_SENSITIVITY) for p in result['probs']]
    except ValueError:
        raise BadInputError('cxr: the validation split holds no COVID-19 film outside the unseen source: no '
                            'operating point can be chosen') from None


def _rate(hits: List[torch.Tensor], groups: Sequence[Any], args: argparse.Namespace) -> Dict[str, Any]:
    """A rate (the share of True in each seed's hits): per seed, and the 95% bootstrap interval of the seed mean
    over patients."""
    from magsd_timm.evaluation.metrics import group_resamples, percentile_interval

    rates = torch.stack([h.double() for h in hits])  # (seeds, films)
    draws = [float(rates[:, picked].mean()) for picked in group_resamples(groups, args.bootstrap, 0)]
    return dict(per_seed=rates.mean(dim=1).tolist(), interval=percentile_interval(torch.tensor(draws), 0.95),
                films=rates.shape[1])


def _with_interval(values: List[float], interval: Sequence[float]) -> str:
    return f'{mean_std(values)} [{interval[0]:.3f}, {interval[1]:.3f}]'


def unseen_summary(results: Dict[str, Any], methods: Sequence[str], args: argparse.Namespace) -> Dict[str, Any]:
    """What the unseen-source test measured, per method: the COVID-19 vs normal AUROC on the unseen source's films,
    the operating point chosen on validation, and there the sensitivity on the unseen films and the specificity on
    each source's normal films of the test split and on the probe (per seed, with intervals over patients)."""
    from magsd_timm.evaluation.operating_point import groups_of, rate_at

    first = results[methods[0]]['unseen COVID-19']
    names = first['class_names']
    covid = names.index('COVID-19')
    groups = groups_of(first['labels'].tolist(), first['dataset'].column('source'), covid, names.index('normal'))
    unseen = groups.pop('positive')
    summary: Dict[str, Any] = dict(source=args.unseen_covid_source, unseen_films=len(unseen), probe=_probe(args),
                                   normal_films={src: len(ix) for src, ix in groups.items()},
                                   operating_sensitivity=OPERATING_SENSITIVITY, methods={})
    for m in methods:
        cut = _operating_point(results[m][OPERATING])

        def at_point(scored: str, index: List[int], positive: bool, m: str = m, cut: List[float] = cut
                     ) -> Dict[str, Any]:
            result = results[m][scored]
            patients = [result['dataset'].patient_groups()[0][i] for i in index]
            return _rate([rate_at(p, index, covid, t, positive) for p, t in zip(result['probs'], cut)], patients, args)

        pair = results[m]['unseen COVID-19'].get('pair')
        summary['methods'][m] = dict(
            auroc=pair and dict(per_seed=pair['auroc'], interval=list(pair['interval']), films=pair['num_images']),
            operating_point=cut, sensitivity=at_point('unseen COVID-19', unseen, True),
            specificity={src: at_point('unseen COVID-19', ix, False) for src, ix in groups.items()},
            probe_specificity=at_point('probe', list(range(len(results[m]['probe']['labels']))), False)
            if 'probe' in results[m] else None)
    return summary


def _unseen_lines(summary: Dict[str, Any], methods: Sequence[str]) -> List[str]:
    """The unseen-source test as a table with its verdicts."""
    by = summary['methods']
    lines = [f"Unseen COVID-19 source: `{summary['source']}`'s {summary['unseen_films']} COVID-19 films (every split) "
             'were never trained or validated on; they are scored against the normal films of the test split '
             f"({', '.join(f'{src} {n}' for src, n in summary['normal_films'].items())}). The operating point is the "
             f"P(COVID-19) at which {summary['operating_sensitivity']:.2f} of the validation split's COVID-19 films are "
             'called COVID-19 (chosen per run).', '']
    if by[methods[0]]['auroc'] is None:
        return lines + ['The set does not hold both COVID-19 and normal films: no AUROC.']
    rows = [[f"COVID-19 vs normal AUROC ({by[methods[0]]['auroc']['films']} films)",
             *(_with_interval(by[m]['auroc']['per_seed'], by[m]['auroc']['interval']) for m in methods)],
            ['operating point: P(COVID-19) at least', *(mean_std(by[m]['operating_point']) for m in methods)],
            [f"COVID-19 sensitivity, unseen films ({summary['unseen_films']})",
             *(_with_interval(by[m]['sensitivity']['per_seed'], by[m]['sensitivity']['interval']) for m in methods)]]
    for src, n in summary['normal_films'].items():
        rows.append([f'specificity, {src} normal films of the test split ({n})',
                     *(_with_interval(by[m]['specificity'][src]['per_seed'], by[m]['specificity'][src]['interval'])
                       for m in methods)])
    if by[methods[0]]['probe_specificity'] is not None:
        rows.append([f"specificity, probe: {summary['probe']} ({by[methods[0]]['probe_specificity']['films']} films, "
                     'held out entirely)', *(_with_interval(by[m]['probe_specificity']['per_seed'],
                                                            by[m]['probe_specificity']['interval']) for m in methods)])
    lines.append(markdown_table(['unseen source', *methods], rows))
    auroc = {m: statistics.mean(by[m]['auroc']['per_seed']) for m in methods}
    lines += ['', *(f'{m}: AUROC on the unseen COVID-19 source {auroc[m]:.3f} (target >= {UNSEEN_TARGET:.2f}: '
                    f'{meets_or_misses(auroc[m] >= UNSEEN_TARGET)}).' for m in methods)]
    if len(methods) > 1:
        gain = auroc[methods[0]] - auroc[methods[1]]
        lines.append(f'{methods[0]} minus {methods[1]}: {gain:+.3f} (target >= +{CXR_TARGET:.2f}: '
                     f'{meets_or_misses(gain >= CXR_TARGET)}).')
    return lines


def _holdout_lines(results: Dict[str, Any], methods: Sequence[str], args: argparse.Namespace) -> List[str]:
    """The held-out source: COVID-19 vs normal AUROC against the target, COVID-19 sensitivity and specificity."""
    held = results[methods[0]]['held out']
    lines = [f'Left out: `{args.holdout_source}`, {len(held["labels"])} images never trained or validated on '
             '(every split of it):', '']
    if 'pair' not in held:
        return lines + ['It does not hold both COVID-19 and normal images: no COVID-19 vs normal AUROC.']
    rows = [['COVID-19 vs normal AUROC (' + str(held['pair']['num_images']) + ' images)',
             *(f"{mean_std(results[m]['held out']['pair']['auroc'])} "
               f"[{results[m]['held out']['pair']['interval'][0]:.3f}, {results[m]['held out']['pair']['interval'][1]:.3f}]"
               for m in methods)]]
    for metric in ('sensitivity', 'specificity'):
        rows.append([f'COVID-19 {metric}', *_seed_scores(results, methods, lambda m, k=metric: m[k]['COVID-19'],
                                                         'held out')])
    rows.append(['accuracy', *_seed_scores(results, methods, lambda m: m['accuracy'], 'held out')])
    lines.append(markdown_table(['held out', *methods], rows))
    for m in methods:
        auroc = statistics.mean(results[m]['held out']['pair']['auroc'])
        lines += ['', f'{m}: COVID-19 vs normal AUROC on the left-out source {auroc:.3f} (target >= '
                      f'{LOSO_TARGET:.2f}: {meets_or_misses(auroc >= LOSO_TARGET)}).']
    return lines


def _shortcut_lines(results: Dict[str, Any], methods: Sequence[str]) -> List[str]:
    """Per class the accuracy on each source's images, and what hiding the lungs or the border does (seed means)."""
    from magsd_timm.evaluation.shortcuts import class_source_accuracy

    tables = {}
    for m in methods:
        sets = [results[m][s] for s in _reported(results[m])]
        sources = [src for r in sets for src in r['dataset'].column('source')]
        labels = torch.cat([r['labels'] for r in sets])
        names = sets[0]['class_names']
        tables[m] = [class_source_accuracy(torch.cat([r['probs'][i] for r in sets]).argmax(dim=1), labels, sources,
                                           names) for i in range(len(sets[0]['probs']))]
    first = tables[methods[0]][0]
    rows = [[c, src, by[src]['num_images'], *(mean_std([t[c][src]['accuracy'] for t in tables[m]]) for m in methods)]
            for c, by in first.items() for src in by]
    lines = ['Shortcuts. Per class, the share of each source\'s images of it recognised (all scored images): a class '
             'recognised in one source and missed in another is recognised by its source.', '',
             markdown_table(['class', 'source', 'images', *methods], rows), '',
             'Hiding the lungs (lung boxes where the box file has them, else the central region) or the border '
             '(the outer eighth of each side, lungs excluded), mean ± sd over seeds:', '']
    rows = []
    for scored in _reported(results[methods[0]]):
        for condition in ('lungs', 'border'):
            cells = [f'{scored}: {condition} hidden']
            for m in methods:
                reports = results[m][scored]['hiding']
                kept = [r[condition]['focus_kept'] for r in reports if r[condition]['focus_kept'] is not None]
                cells += [mean_std([r[condition]['answers_changed'] for r in reports]),
                          mean_std(kept) if kept else 'n/a']
            rows.append(cells)
    lines.append(markdown_table(['images', *(f'{m} {what}' for m in methods
                                             for what in ('answers changed', 'COVID-19 answers kept'))], rows))
    return lines


def run(args: argparse.Namespace) -> str:
    """MAG-SD and the plain backbone, same data, budget and recipe, over seeds: test metrics with spreads and CIs;
    leaving a source out, its scores too; and the shortcut measures."""
    from magsd_timm.evaluation.localization import load_boxes, localization_report
    from magsd_timm.evaluation.metrics import defined_mean
    from magsd_timm.evaluation.report import per_source_metrics
    from magsd_timm.run_records import read_args

    if args.data is None:
        raise BadInputError('--suite cxr needs --data PREPARED (recipes/prepare_data.py)')
    args.probe = _probe_in_data(args)  # once: every run and every scored set use what it finds
    methods = {'MAG-SD': 'magsd', 'baseline': 'baseline'}
    boxes = load_boxes(args.boxes) if args.boxes else None  # read once, for the hiding and the maps
    results: Dict[str, Dict[str, Any]] = {}
    records: List[Dict[str, Any]] = []
    start = time.perf_counter()
    for name, method in methods.items():
        folders = [_train_run(args, method, seed) for seed in args.seeds]
        records += [read_args(folder) for folder in folders]
        results[name] = _method_results([_run_probabilities(folder, args) for folder in folders], args, boxes)
    minutes = (time.perf_counter() - start) / 60
    main = 'in distribution' if _held_out(args) else 'test'
    class_names = results['MAG-SD'][main]['class_names']
    names = list(methods)

    def ci(name: str, key: str, cls: Optional[str] = None) -> str:
        bounds = results[name][main]['intervals'][key]
        low, high = bounds[cls] if cls else bounds
        return f'[{low:.3f}, {high:.3f}]'

    # what the runs' records say, not what this invocation asked (a reused run was checked to match)
    per_run = ('method', 'seed', 'output', 'command', 'resume')
    shared = {k: v for k, v in records[0].items() if k not in per_run and all(r.get(k) == v for r in records)}
    magsd_records = [r for r in records if r.get('method') == 'magsd']
    magsd_only = ', '.join(f'{k} {v}' for k, v in magsd_records[0].items()
                           if k not in per_run and k not in shared and all(r.get(k) == v for r in magsd_records))
    held = ' '.join(f'`{name}`' for name in _held_out(args))
    scored = (f"the test split of `{display(shown_path(args.data))}` without {held}, which was left out of training "
              'and validation' if held else f'the test split of `{display(shown_path(args.data))}`')
    lines = [f"MAG-SD ({shared.get('model')}) against its plain backbone, trained alike ({shared.get('epochs')} "
             f"epochs, {shared.get('img_size')} px, batch {shared.get('batch_size')}, optimizer {shared.get('opt')} "
             f"lr {shared.get('lr')}, schedule {shared.get('sched')}, pretrained {shared.get('pretrained')}, "
             f"{shared.get('freeze_stages')} stages frozen, balance {shared.get('balance')}, "
             f"{shared.get('epoch_samples') or 'all'} draws an epoch, augment {shared.get('augment')}, source "
             f"adversary {shared.get('source_adversary')}, films cut to the lungs by "
             f"{display(shown_path(shared['crop_lungs'])) if shared.get('crop_lungs') else 'no detector'}"
             f"{f'; MAG-SD alone: {magsd_only}' if magsd_only else ''}, as the runs' args.yaml record), seeds "
             f"{', '.join(map(str, sorted({r.get('seed') for r in records})))}, on {scored} "
             f"({len(results['MAG-SD'][main]['labels'])} images): mean ± standard deviation over seeds, and the 95% "
             f"bootstrap interval (over patients) of the seed mean. {minutes:.0f} minutes for this invocation "
             '(training runs found complete are reused).', '']
    table = []
    for key in ('accuracy', 'macro_f1'):
        cells = _seed_scores(results, names, lambda m, key=key: m[key], main)
        table.append([key, *(f'{c} {ci(n, key)}' for c, n in zip(cells, names))])
    table.append(['macro AUROC', *_seed_scores(results, names, lambda m: defined_mean(list(m['auroc'].values())),
                                               main)])
    for metric in ('sensitivity', 'specificity', 'auroc'):
        for c in class_names:
            cells = _seed_scores(results, names, lambda m, metric=metric, c=c: m[metric][c], main)
            table.append([f'{metric}: {c}', *(f'{v} {ci(n, metric, c)}' for v, n in zip(cells, names))])
    lines.append(markdown_table(['metric', *names], table))
    gain = (statistics.mean(m['macro_f1'] for m in results['MAG-SD'][main]['per_seed'])
            - statistics.mean(m['macro_f1'] for m in results['baseline'][main]['per_seed']))
    lines += ['', f'Macro F1, MAG-SD minus baseline: {gain:+.3f} (target >= +{CXR_TARGET:.2f}: '
                  f'{meets_or_misses(gain >= CXR_TARGET)}).', '']
    if args.holdout_source:
        lines += _holdout_lines(results, names, args) + ['']
    if args.unseen_covid_source:
        summary = unseen_summary(results, names, args)
        summary['in_distribution'] = {n: dict(macro_f1=[m['macro_f1'] for m in results[n][main]['per_seed']],
                                              macro_f1_interval=list(results[n][main]['intervals']['macro_f1']))
                                      for n in names}
        summary['runs'] = records  # each run's args.yaml: the settings, the data's SHA-256, the command
        summary['command'] = 'python recipes/benchmark.py ' + shlex.join(args.argv)
        write_text_atomic(args.output_dir / f'{table_name(args)}.json', strict_json(summary), 'cxr summary')
        lines += _unseen_lines(summary, names) + ['']
    covid = 'COVID-19' in class_names
    source_rows = []
    for scored_set in _reported(results['MAG-SD']):
        by_run = {n: [per_source_metrics(p, results[n][scored_set]['labels'],
                                         results[n][scored_set]['dataset'].column('source'), class_names)
                      for p in results[n][scored_set]['probs']] for n in names}
        for source, (count, _, _) in by_run['MAG-SD'][0].items():
            cells = [source, scored_set, count]
            for n in names:
                scores = [run[source][2] for run in by_run[n]]
                cells += [mean_std([m['accuracy'] for m in scores]), mean_std([m['macro_f1'] for m in scores])]
                cells += [mean_std([m[k]['COVID-19'] for m in scores]) for k in ('sensitivity', 'specificity')] \
                    if covid else []
            source_rows.append(cells)
    columns = ['accuracy', 'macro F1', *(['COVID-19 sensitivity', 'COVID-19 specificity'] if covid else [])]
    lines += ['Per source (macro F1 over the classes each source holds):', '',
              markdown_table(['source', 'scored', 'images', *(f'{n} {c}' for n in names for c in columns)], source_rows), '']
    lines += _shortcut_lines(results, names)
    if args.boxes:
        where = {n: [localization_report(model, results[n][main]['dataset'], boxes, replicates=args.bootstrap)
                     for model in results[n]['models']] for n in names}
        with torch.no_grad():  # the side of MA-Net's attention maps at this input size
            image = results['MAG-SD'][main]['dataset'][0][0][None].to(args.device)
            side = int(results['MAG-SD']['models'][0].forward_with_attention(image)[1].shape[-1])
        mass = {n: statistics.mean(w['mass_in_boxes'] for w in where[n]) for n in names}
        met = mass['MAG-SD'] >= MAP_TARGET and side >= 7 and mass['MAG-SD'] > mass['baseline']
        lines += ['', f'Where they look, on the {main} images with boxes in `{display(shown_path(args.boxes))}` '
                      '(mean ± sd over seeds):', '',
                  markdown_table(['heat map', 'share inside the boxes', 'pointing game'], [
                      [f"{n}: {where[n][0]['map']}", mean_std([w['mass_in_boxes'] for w in where[n]]),
                       mean_std([w['pointing_hit_rate'] for w in where[n]])] for n in names]),
                  '', f"The boxes cover {where['MAG-SD'][0]['box_area_share']:.3f} of the image: a uniform map would "
                      f"put that share inside them. MA-Net's {where['MAG-SD'][0]['map']} map: "
                      f"{mass['MAG-SD']:.3f} inside (target >= {MAP_TARGET:.1f} with maps of at least 7 x 7, here "
                      f"about {side} x {side}, and above Grad-CAM's {mass['baseline']:.3f}: "
                      f"{meets_or_misses(met)})."]
    return '\n'.join(lines)
