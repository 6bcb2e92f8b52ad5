"""Pulling MA-Net checkpoints: hf-hub: names, revisions, registered tags, the offline cache, unsafe or unfit weights."""
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.models import save_for_hf

import magsd_timm
from magsd_timm.data import resolve_cxr_data_config
from magsd_timm.hub import push_model
from magsd_timm.models import UnsafeWeightsError, WeightsMismatchError

REPO = 'tester/magsd-pull'


@pytest.fixture(scope='module')
def pushed(hub, trained_run):
    """The trained run pushed to REPO's main branch; its local best checkpoint."""
    push_model(trained_run, REPO)
    return trained_run / 'best'


def _hub_requests(hub, since: int) -> set:
    """The repos the requests after index `since` asked about."""
    return {path.split('/resolve/')[0].split('/api/models/')[-1].strip('/')
            for _, path, _ in hub.requests[since:] if '/resolve/' in path or path.startswith('/api/models/')}


def test_create_model_from_the_hub_rebuilds_the_exact_model(hub, pushed):
    since = len(hub.requests)
    model = timm.create_model(f'hf-hub:{REPO}', pretrained=True).eval()
    local = timm.create_model(f'local-dir:{pushed}', pretrained=True).eval()
    saved = load_file(pushed / 'model.safetensors')
    assert model.state_dict().keys() == saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), local(x))
    assert list(model.pretrained_cfg['label_names']) == ['bacterial pneumonia', 'normal']
    assert resolve_cxr_data_config(model) == resolve_cxr_data_config(local)
    assert model.backbone_name == 'test_resnet' and model.num_maps == 4
    assert _hub_requests(hub, since) == {REPO}  # the backbone's weights were not downloaded


def test_load_takes_a_revision(hub, pushed, tmp_path):
    changed = timm.create_model(f'local-dir:{pushed}', pretrained=True)
    with torch.no_grad():
        changed.fc.weight.mul_(-1)
    config = json.loads((pushed / 'config.json').read_text())
    save_for_hf(changed, tmp_path / 'exp', safe_serialization=True, model_config={'label_names': config['label_names']})
    push_model(tmp_path / 'exp', REPO, revision='exp')

    assert torch.equal(magsd_timm.load(f'{REPO}@exp').fc.weight, changed.fc.weight)
    assert torch.equal(magsd_timm.load(REPO).fc.weight, -changed.fc.weight)
    assert torch.equal(magsd_timm.load(str(pushed.parent)).fc.weight, -changed.fc.weight)  # a local training output


def test_unknown_names_get_close_matches():
    with pytest.raises(ValueError, match=r"Unknown model 'magsd_resnet5'.*Close matches: magsd_resnet50"):
        magsd_timm.load('magsd_resnet5')


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, **env))


@pytest.mark.subprocess
def test_a_registered_tag_pulls_its_weights_from_the_hub(pushed):
    # a tag is one line of magsd.HUB_WEIGHTS; here the table is given one and the entry registered again
    proc = _python(f"""
        import json, torch, timm
        from safetensors.torch import load_file
        from timm.models import register_model
        import magsd_timm.models.magsd as magsd
        magsd.default_cfgs = magsd._default_cfgs({{'magsd_custom.loopback': dict(
            hf_hub_id='{REPO}', num_classes=2, label_names=('bacterial pneumonia', 'normal'))}})
        register_model(magsd.magsd_custom)
        model = timm.create_model('magsd_custom.loopback', pretrained=True, backbone='test_resnet', num_maps=4)
        saved = load_file('{pushed / 'model.safetensors'}')
        print(json.dumps(dict(
            tags=timm.list_pretrained('magsd_custom*'),
            equal=all(torch.equal(v, saved[k]) for k, v in model.state_dict().items()),
            labels=list(model.pretrained_cfg['label_names']))))
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert 'magsd_custom.loopback' in result['tags']
    assert result['equal'] and result['labels'] == ['bacterial pneumonia', 'normal']


@pytest.mark.subprocess
def test_the_cache_serves_the_model_offline_without_the_server(pushed):
    timm.create_model(f'hf-hub:{REPO}', pretrained=True)  # fills the cache (HF_HOME of the test session)
    proc = _python(f"""
        import json, torch, timm, magsd_timm
        from safetensors.torch import load_file
        model = timm.create_model('hf-hub:{REPO}', pretrained=True)
        saved = load_file('{pushed / 'model.safetensors'}')
        print(json.dumps(all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())))
    """, HF_HUB_OFFLINE='1', HF_ENDPOINT='http://127.0.0.1:9')  # nothing listens there
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == 'true'


def test_where_the_hub_does_not_answer_a_pulled_repo_loads_from_the_cache_and_others_fail_at_once(
        hub, pushed, monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    from magsd_timm.data import open_dataset
    from magsd_timm.hub.pull import checkpoint_config
    from magsd_timm.models.offline_weights import NoWeightsSourceError

    magsd_timm.load(f'hf-hub:{REPO}')  # pulled once: in the cache
    monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:9')  # nothing listens there: asked once, no retries
    since = len(hub.requests)
    model = magsd_timm.load(f'hf-hub:{REPO}')
    saved = load_file(pushed / 'model.safetensors')
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    with pytest.raises(LocalEntryNotFoundError, match=r'hf-hub:tester/never-pushed: http://127.0.0.1:9 cannot be '
                                                      r'reached \(\w+\), and the Hub cache does not hold it'):
        checkpoint_config("hf-hub:tester/never-pushed")
    with pytest.raises(LocalEntryNotFoundError, match=r'tester/never-pushed-data: http://127.0.0.1:9 cannot be '
                                                      r'reached \(\w+\), and the Hub cache does not hold it'):
        open_dataset('hf-hub:tester/never-pushed-data', 'train')  # datasets come through the same rule
    # a plain timm name's ImageNet weights follow the rule of every pretrained backbone: the Hub, its cache, a package
    with pytest.raises(NoWeightsSourceError, match='no ImageNet weights for test_resnet: http://127.0.0.1:9 cannot be '
                                                   'reached'):
        magsd_timm.load('test_resnet')
    assert len(hub.requests) == since


def _pickle_bytes(state_dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


def test_a_repo_with_only_pickle_weights_is_refused_unless_the_user_opts_in(hub, pushed):
    weights = load_file(pushed / 'model.safetensors')
    hub.put_commit('tester/pickled', {'config.json': (pushed / 'config.json').read_bytes(),
                                      'pytorch_model.bin': _pickle_bytes(weights)})
    since = len(hub.requests)
    with pytest.raises(UnsafeWeightsError, match=r"'tester/pickled' has no model.safetensors.*pytorch_model.bin"):
        timm.create_model('hf-hub:tester/pickled', pretrained=True)
    assert not any(path.endswith('pytorch_model.bin') for _, path, _ in hub.requests[since:])  # not even downloaded

    model = magsd_timm.load('tester/pickled', allow_pickle=True)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    with pytest.raises(UnsafeWeightsError):  # the opt-in ends with the call
        magsd_timm.load('tester/pickled')


def test_weights_that_do_not_fit_the_architecture_are_named(hub, pushed):
    config = json.loads((pushed / 'config.json').read_text())
    config['model_args']['num_maps'] = 8  # the weights have 4 maps
    hub.put_commit('tester/unfit', {'config.json': json.dumps(config).encode(),
                                    'model.safetensors': (pushed / 'model.safetensors').read_bytes()})
    with pytest.raises(WeightsMismatchError) as error:
        timm.create_model('hf-hub:tester/unfit', pretrained=True)
    message = str(error.value)
    assert 'attention.0.0.weight: checkpoint (4, ' in message and 'vs model (8, ' in message
    assert 'magsd_custom (backbone test_resnet, 8 attention maps' in message and '(+1 more)' in message


def test_a_new_head_for_other_classes_is_not_a_mismatch(pushed):
    model = timm.create_model(f'hf-hub:{REPO}', pretrained=True, num_classes=5)
    saved = load_file(pushed / 'model.safetensors')
    assert model.fc.weight.shape[0] == 5
    assert torch.equal(model.attention[0][0].weight, saved['attention.0.0.weight'])


def test_pickle_checkpoint_files_are_refused_locally_too(pushed, tmp_path):
    folder = tmp_path / 'pickled'
    folder.mkdir()
    (folder / 'config.json').write_bytes((pushed / 'config.json').read_bytes())
    (folder / 'pytorch_model.bin').write_bytes(_pickle_bytes(load_file(pushed / 'model.safetensors')))
    with pytest.raises(UnsafeWeightsError, match='pytorch_model.bin'):
        timm.create_model(f'local-dir:{folder}', pretrained=True)



@pytest.mark.parametrize('ref', ['tester/magsd-pull@../../etc', 'tester/magsd-pull@/abs', 'hf-hub:tester/magsd-pull@a//b',
                                 'tester/magsd-pull@.hidden', 'tester/magsd-pull@main/..', 'tester/magsd-pull@x.lock'])
def test_path_like_revisions_are_refused_before_any_download(hub, ref):
    since = len(hub.requests)
    with pytest.raises(ValueError, match='Invalid revision'):
        magsd_timm.load(ref)
    assert hub.requests[since:] == []


@pytest.mark.parametrize('ref', ['hf-hub:/abs/dir', 'hf-hub:../x', 'hf-hub:./org/name', 'hf-hub:a/b/c', 'hf-hub:name'])
def test_after_hf_hub_comes_a_repo_id_never_a_path_for_models_and_datasets_alike(hub, ref):
    from magsd_timm.data import open_dataset

    since = len(hub.requests)
    for load in (magsd_timm.load, lambda r: open_dataset(r, 'train')):
        with pytest.raises(ValueError, match='after hf-hub: comes a Hub repo id, ORG/NAME'):
            load(ref)
    assert hub.requests[since:] == []


def test_a_hub_id_that_is_also_a_local_folder_is_the_hubs(hub, tmp_path, monkeypatch):
    from datasets import Dataset

    from magsd_timm.data import open_dataset

    monkeypatch.chdir(tmp_path)
    Dataset.from_dict({'label': [0]}).save_to_disk('tester/not-on-the-hub')  # a local folder of the same name
    with pytest.raises(Exception) as raised:
        open_dataset('hf-hub:tester/not-on-the-hub', 'train')
    assert 'RepositoryNotFound' in type(raised.value).__name__ or '404' in str(raised.value)
    assert any('tester/not-on-the-hub' in path for _, path, _ in hub.requests)  # it asked the Hub, not the disk


def test_a_file_the_hub_names_outside_the_cache_is_removed_and_refused(hub, pushed, tmp_path):
    from huggingface_hub import constants

    from magsd_timm.hub import checkpoint_config
    from magsd_timm.utils.hub_files import HubFileError

    hub.put_commit('tester/etag-escape', {'config.json': (pushed / 'config.json').read_bytes()})
    blobs = Path(constants.HF_HUB_CACHE) / 'models--tester--etag-escape' / 'blobs'
    hub.etags[('tester/etag-escape', 'config.json')] = os.path.relpath(tmp_path / 'escaped', blobs)
    with pytest.raises(HubFileError, match='outside the cache'):
        checkpoint_config('hf-hub:tester/etag-escape')
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the server's bytes nor their lock stay there
    del hub.etags[('tester/etag-escape', 'config.json')]
    assert checkpoint_config('hf-hub:tester/etag-escape')['architecture']  # an honest answer is used


@pytest.mark.parametrize('revision', ['main', 'v1.0', 'refs/pr/1', 'a' * 40, 'exp_2-b'])
def test_revisions_as_the_hub_names_them_are_accepted(revision):
    from magsd_timm.utils.hub_files import check_revision

    assert check_revision(revision) == revision


def test_a_model_that_cuts_films_to_its_lungs_travels_with_its_detector_and_is_refused_without_it(
        hub, trained_run, tmp_path):
    import shutil

    from huggingface_hub import HfApi

    from magsd_timm.errors import BadInputError
    from magsd_timm.hub import checkpoint_config, load_lung_crop
    from magsd_timm.models.lung_detector import DETECTOR_FILES, LungDetector, load_detector, save_detector

    run = tmp_path / 'run'
    shutil.copytree(trained_run, run)
    save_detector(LungDetector('test_resnet', 32, mean_box=(0.2, 0.1, 0.8, 0.9)), tmp_path / 'lungs', {})
    detector = load_detector(tmp_path / 'lungs')
    for file in DETECTOR_FILES:
        shutil.copyfile(tmp_path / 'lungs' / file, run / 'best' / file)
    config = json.loads((run / 'best' / 'config.json').read_text())
    (run / 'best' / 'config.json').write_text(json.dumps(dict(config, lung_crop=detector.record())))
    push_model(run, 'tester/magsd-lungs')
    name = 'hf-hub:tester/magsd-lungs'
    pulled = load_lung_crop(name, checkpoint_config(name))
    assert pulled.digest == detector.digest and pulled.mean_box == [0.2, 0.1, 0.8, 0.9]
    card = hub.file('tester/magsd-lungs', 'README.md').decode()
    assert 'first cut to its lungs by the lung detector in this repo' in card and 'load_lung_crop(' in card

    bare = tmp_path / 'bare'  # a repo whose config cuts to the lungs, without the detector
    bare.mkdir()
    for file in ('model.safetensors', 'config.json'):
        shutil.copyfile(run / 'best' / file, bare / file)
    HfApi().create_repo('tester/magsd-no-lungs')
    HfApi().upload_folder(folder_path=str(bare), repo_id='tester/magsd-no-lungs')
    name = 'hf-hub:tester/magsd-no-lungs'
    with pytest.raises(BadInputError, match='lung_detector.json and lung_detector.safetensors are not beside it'):
        load_lung_crop(name, checkpoint_config(name))
    with pytest.raises(BadInputError, match='lung_detector.json and lung_detector.safetensors are not beside it'):
        push_model(bare, 'tester/magsd-never')  # nor is such a folder pushed
