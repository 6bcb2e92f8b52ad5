"""Published tags: from the Hub when it answers, else from the package's copy; the recorded SHA-256 guards both."""
import json
import shutil
from collections import deque

import pytest
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import load_file
from timm.models import _registry
from timm.models._pretrained import PretrainedCfg

import magsd_timm
from magsd_timm.errors import BadInputError
from magsd_timm.models import magsd, published
from magsd_timm.models.published import PublishedWeightsError
from magsd_timm.utils.digest import file_sha256

NAME = 'magsd_custom.cxr_test'
REPO = 'tester/magsd-published'


@pytest.fixture
def release(trained_run, tmp_path, monkeypatch, hub):
    """The trained run's best checkpoint published as NAME: its files in the package's folder (here a copy in
    tmp_path) and on the Hub, an entry in HUB_WEIGHTS, the tag in timm's registry."""
    folder = tmp_path / 'package' / 'magsd-published'
    shutil.copytree(trained_run / 'best', folder)
    files = {f: (folder / f).read_bytes() for f in ('model.safetensors', 'config.json')}
    hub.put_commit(REPO, files)
    config = json.loads(files['config.json'])
    entry = dict(config['pretrained_cfg'], label_names=config['label_names'], hf_hub_id=REPO, folder=folder.name,
                 sha256=file_sha256(folder / 'model.safetensors'))
    arch, tag = NAME.split('.')
    cfg = PretrainedCfg(**{k: v for k, v in dict(magsd._ARCH_CFGS[arch], **entry).items()
                           if k not in published.PUBLISHED_KEYS and k in PretrainedCfg.__dataclass_fields__})
    cfg = PretrainedCfg(**dict(cfg.__dict__, architecture=arch, tag=tag))
    monkeypatch.setitem(magsd.HUB_WEIGHTS, NAME, entry)
    monkeypatch.setitem(_registry._model_pretrained_cfgs, NAME, cfg)
    monkeypatch.setattr(magsd.default_cfgs[arch], 'tags', deque([*magsd.default_cfgs[arch].tags, tag]))
    monkeypatch.setitem(magsd.default_cfgs[arch].cfgs, tag, cfg)
    monkeypatch.setattr(published, 'packaged_folder', lambda e: tmp_path / 'package' / e['folder'])
    monkeypatch.setattr(magsd_timm.models.offline_weights, '_said', set())
    return folder, config['model_args']


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.linspace(0, 1, 64 * 64).reshape(1, 1, 64, 64))


def _from_file(folder, model_args) -> torch.Tensor:
    model = timm.create_model('magsd_custom', **model_args)
    model.load_state_dict(load_file(folder / 'model.safetensors'))
    return _logits(model)


def test_offline_a_published_tag_loads_the_packages_copy_and_says_so(release, monkeypatch, capsys):
    folder, model_args = release
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    model = timm.create_model(NAME, pretrained=True, **model_args)
    assert torch.equal(_logits(model), _from_file(folder, model_args))
    err = capsys.readouterr().err
    assert f'pretrained weights of {NAME} from the installed package' in err and 'HF_HUB_OFFLINE is set' in err
    assert model.pretrained_source.startswith(f'{NAME} from the installed package')
    assert list(model.pretrained_cfg['label_names']) == ['bacterial pneumonia', 'normal']


def test_when_the_hub_answers_a_published_tag_comes_from_it(release, hub, capsys):
    folder, model_args = release
    since = len(hub.requests)
    model = magsd_timm.load(NAME, **model_args)
    assert torch.equal(_logits(model), _from_file(folder, model_args))
    assert f'pretrained weights of {NAME} from the Hub ({REPO})' in capsys.readouterr().err
    assert any(REPO in path for _, path, _ in hub.requests[since:])


def test_a_hub_without_the_file_falls_back_to_the_package(release, hub, capsys):
    folder, model_args = release
    hub.put_commit('tester/empty-repo', {'README.md': b'nothing here'})
    magsd.HUB_WEIGHTS[NAME]['hf_hub_id'] = 'tester/empty-repo'
    model = timm.create_model(NAME, pretrained=True, **model_args)
    assert torch.equal(_logits(model), _from_file(folder, model_args))
    assert 'from the installed package' in capsys.readouterr().err


def test_weights_other_than_the_recorded_ones_are_refused_from_the_hub_and_from_the_package(release, hub, monkeypatch):
    folder, model_args = release
    changed = load_file(folder / 'model.safetensors')
    changed['fc.weight'] = -changed['fc.weight']
    from safetensors.torch import save

    hub.put_commit(REPO, {'model.safetensors': save(changed)})  # the Hub repo moved on, the entry did not
    with pytest.raises(PublishedWeightsError, match=rf'{NAME}: .* from the Hub \({REPO}\) is not the published weights'):
        timm.create_model(NAME, pretrained=True, **model_args)
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    (folder / 'model.safetensors').write_bytes(save(changed))  # a damaged install
    with pytest.raises(PublishedWeightsError, match='is not the published weights'):
        timm.create_model(NAME, pretrained=True, **model_args)


def test_offline_a_missing_file_is_one_line_naming_the_tag_and_the_file(release, monkeypatch, tmp_path, capsys):
    from magsd_timm.cli.magsd import main

    folder, _ = release
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    (folder / 'model.safetensors').unlink()
    film = magsd_timm.data.sample_records()[0]['path']
    assert main(['predict', NAME, film]) == 2  # config.json is the package's too, then the weights are missing
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and NAME in err and 'model.safetensors' in err and 'is missing' in err


def test_predict_with_a_published_tag_offline_answers_from_the_packages_files(release, monkeypatch, capsys):
    from magsd_timm.cli.magsd import main

    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    film = magsd_timm.data.sample_records()[0]['path']
    assert main(['predict', NAME, film, '--format', 'json']) == 0
    out = json.loads(capsys.readouterr().out)
    assert out['predictions'][0]['predicted'] in ('bacterial pneumonia', 'normal')


def test_a_tag_that_does_not_exist_lists_the_ones_that_do(release):
    with pytest.raises(BadInputError, match=rf'magsd_custom.nope: no such tag; its published chest X-ray models are {NAME}'):
        timm.create_model('magsd_custom.nope', pretrained=True)
    with pytest.raises(BadInputError, match='magsd_resnet18.nope: no such tag; it has no published chest X-ray model'):
        timm.create_model('magsd_resnet18.nope')


def test_the_untrained_classifier_warning_names_the_architectures_published_tags(release, monkeypatch):
    monkeypatch.setattr(magsd, '_warned_untrained', set())
    asked_by_tag = rf'its trained chest X-ray model is asked for by its tag: {NAME}'
    with pytest.warns(magsd.UntrainedClassifierWarning, match=asked_by_tag):
        magsd._warn_untrained('magsd_custom')


def test_a_published_tag_never_becomes_the_architectures_default():
    cfgs = magsd._default_cfgs({NAME: dict(hf_hub_id=REPO, folder='x', sha256='0' * 64, license='other')})
    assert list(cfgs['magsd_custom'].tags) == ['', 'cxr_test'] and cfgs['magsd_custom'].default.hf_hub_id is None
    assert magsd.default_cfgs['magsd_efficientnet_lite0'].default.hf_hub_id is None  # the published one too


def test_the_untagged_name_stays_the_architecture_with_imagenet_backbone_weights(release):
    model = timm.create_model('magsd_custom', backbone='test_resnet', num_maps=4)
    assert model.pretrained_cfg.get('tag') in (None, '') and model.pretrained_cfg.get('hf_hub_id') is None
