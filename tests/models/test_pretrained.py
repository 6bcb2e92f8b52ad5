"""pretrained=True loads the backbone's ImageNet weights through timm's own Hub loading, offline.

Each check runs in a subprocess because huggingface_hub reads HF_HOME and HF_HUB_OFFLINE at import.
The Hub cache is laid out by hand for timm's tiny `test_resnet.r160_in1k`, as a download leaves it.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

BACKBONE = 'test_resnet.r160_in1k'
COMMIT = 'a' * 40


def _run(code: str, hf_home: Path, *args: str) -> dict:
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE='1', HF_HUB_DISABLE_TELEMETRY='1')
    proc = subprocess.run(
        [sys.executable, '-c', textwrap.dedent(code), *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def hub_cache(tmp_path_factory) -> Path:
    """An HF_HOME whose Hub cache holds random 3-channel ImageNet-style weights of the tiny backbone."""
    hf_home = tmp_path_factory.mktemp('hf_home')
    repo = hf_home / 'hub' / f"models--timm--{BACKBONE}"
    snapshot = repo / 'snapshots' / COMMIT
    snapshot.mkdir(parents=True)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(COMMIT)
    torch.manual_seed(0)
    source = timm.create_model(BACKBONE.split('.')[0])  # in_chans 3, 1000-class head, as published
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, snapshot / 'model.safetensors')
    return hf_home


LOAD = """
    import json, sys, warnings, torch, timm, magsd_timm
    from safetensors.torch import load_file
    from timm.models import save_for_hf
    from magsd_timm.models import UntrainedClassifierWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model = timm.create_model('magsd_custom', backbone=sys.argv[1], pretrained=True)
        timm.create_model('magsd_custom', backbone=sys.argv[1], pretrained=True)
        timm.create_model('magsd_custom', backbone=sys.argv[1])  # no pretrained weights asked: nothing to say
    untrained = [str(w.message) for w in caught if issubclass(w.category, UntrainedClassifierWarning)]
    source = load_file(sys.argv[2])
    backbone = model.backbone.state_dict()
    stem = model._traits['first_conv'][len('backbone.'):] + '.weight'
    torch.testing.assert_close(backbone[stem], source[stem].sum(dim=1, keepdim=True))
    others_equal = all(torch.equal(v, source[k]) for k, v in backbone.items() if k != stem)
    save_for_hf(model, sys.argv[3], safe_serialization=True)
    print(json.dumps(dict(
        others_equal=others_equal, stem_shape=list(backbone[stem].shape),
        model_args=model._model_args, head_in_source='fc.weight' in source and source['fc.weight'].shape[0],
        fc_shape=list(model.fc.weight.shape),
        attention_bn_fresh=all(bool((a[1].running_mean == 0).all()) for a in model.attention),
        untrained=untrained)))
"""

RELOAD = """
    import json, sys, torch, timm, magsd_timm
    from safetensors.torch import load_file
    model = timm.create_model('local-dir:' + sys.argv[1], pretrained=True)
    saved = load_file(sys.argv[1] + '/model.safetensors')
    print(json.dumps(dict(equal=all(torch.equal(v, saved[k]) for k, v in model.state_dict().items()))))
"""


@pytest.fixture(scope='module')
def pretrained_export(hub_cache, tmp_path_factory):
    """Build magsd_custom(pretrained=True) offline, check it against the cached weights, save it."""
    weights = hub_cache / 'hub' / f'models--timm--{BACKBONE}' / 'snapshots' / COMMIT / 'model.safetensors'
    out = tmp_path_factory.mktemp('export')
    return _run(LOAD, hub_cache, BACKBONE, str(weights), str(out)), out


def test_pretrained_loads_backbone_imagenet_weights_with_a_one_channel_stem(pretrained_export):
    result, _ = pretrained_export
    assert result['others_equal']
    assert result['stem_shape'][1] == 1
    assert result['fc_shape'][0] == 4  # a fresh 4-class CXR head, not the 1000-class ImageNet one
    assert result['attention_bn_fresh']
    assert result['model_args'] == {'backbone': BACKBONE}  # nothing that would fetch the backbone again


@pytest.mark.subprocess
def test_saved_pretrained_model_reloads_offline_without_the_backbone_cache(pretrained_export, tmp_path):
    _, out = pretrained_export
    config = json.loads((out / 'config.json').read_text())
    assert 'pretrained' not in json.dumps(config['model_args'])
    empty_home = tmp_path / 'empty_hf_home'
    empty_home.mkdir()
    assert _run(RELOAD, empty_home, str(out))['equal']


def test_pretrained_without_cxr_weights_warns_once_that_the_classifier_is_untrained(pretrained_export):
    result, _ = pretrained_export  # a fresh process: two pretrained builds, then one without weights
    assert len(result['untrained']) == 1
    assert 'magsd_custom: pretrained=True loads the ImageNet weights of its backbone only (it has no published chest ' \
        'X-ray weights)' in result['untrained'][0]
    assert 'classifier are untrained' in result['untrained'][0]


def test_magsd_refuses_to_predict_with_a_classifier_that_never_trained(pretrained_export, tmp_path, capsys):
    from magsd_timm.cli.magsd import main
    from magsd_timm.data import sample_records

    _, out = pretrained_export  # ImageNet backbone, fresh head, saved: no training record
    image = sample_records()[0]['path']
    for command in (['predict', str(out), str(image)], ['evaluate', str(out)], ['predict', 'magsd_resnet50', str(image)]):
        assert main(command) == 2
        captured = capsys.readouterr()
        assert 'has no trained classifier' in captured.err and '--allow-untrained' in captured.err
        assert captured.out == ''
    assert main(['predict', str(out), str(image), '--allow-untrained', '--format', 'json']) == 0
    assert len(json.loads(capsys.readouterr().out)['predictions']) == 1
