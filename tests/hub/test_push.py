"""magsd-hub push-model / push-dataset against the loopback Hub: one commit per push, nothing local changed."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

CLI = shutil.which('magsd-hub', path=str(Path(sys.executable).parent))  # this interpreter's script
TOKEN = os.environ['HF_TOKEN']  # tests/conftest.py's fake token


def magsd_hub(*args: str) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    assert CLI, 'the magsd-hub console script is not installed (pip install -e .)'
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture
def hub_here(capfd):
    """magsd-hub's main in this process (no interpreter start-up), its output captured at the file descriptors."""
    from magsd_timm.cli.magsd_hub import main

    def run(*args) -> subprocess.CompletedProcess:
        code = main([str(a) for a in args])
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)
    return run


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}


def _no_token(proc: subprocess.CompletedProcess) -> None:
    assert TOKEN not in proc.stdout and TOKEN not in proc.stderr


@pytest.mark.subprocess
def test_push_model_commits_weights_config_and_card_in_one_commit(hub, trained_run):
    proc = magsd_hub('push-model', trained_run, 'tester/magsd-push')
    assert proc.returncode == 0, proc.stderr
    _no_token(proc)
    repo = hub.repo('tester/magsd-push')
    assert [c.title for c in repo.history()] == ['Upload magsd_custom trained with magsd-timm', 'initial commit']
    assert set(repo.commits[repo.branches['main']].files) == {
        '.gitattributes', 'model.safetensors', 'config.json', 'README.md'}
    assert hub.file('tester/magsd-push', 'model.safetensors') == (trained_run / 'best' / 'model.safetensors').read_bytes()
    config = json.loads(hub.file('tester/magsd-push', 'config.json'))
    assert config['architecture'] == 'magsd_custom' and config['label_names'] == ['bacterial pneumonia', 'normal']
    assert config['model_args']['backbone'] == 'test_resnet' and 'pretrained' not in config['model_args']
    card = hub.file('tester/magsd-push', 'README.md').decode()
    meta = yaml.safe_load(card.split('---')[1])
    assert meta['library_name'] == 'timm' and meta['pipeline_tag'] == 'image-classification'
    assert "hf-hub:tester/magsd-push" in card and TOKEN not in card
    # the token went to the server in the Authorization header, and nowhere else
    assert any(auth == f'Bearer {TOKEN}' for method, path, auth in hub.requests if path.endswith('/commit/main'))


def test_dry_run_writes_exactly_the_folder_that_is_pushed(hub, trained_run, tmp_path, hub_here):
    proc = hub_here('push-model', trained_run, 'tester/magsd-dry', '--dry-run', tmp_path / 'staged')
    assert proc.returncode == 0, proc.stderr
    assert ('model', 'tester/magsd-dry') not in hub.repos  # a dry run does not touch the Hub
    assert hub_here('push-model', trained_run, 'tester/magsd-dry').returncode == 0
    staged = tmp_path / 'staged'
    assert sorted(p.name for p in staged.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    for path in staged.iterdir():
        assert hub.file('tester/magsd-dry', path.name) == path.read_bytes(), path.name
    again = hub_here('push-model', trained_run, 'tester/magsd-dry', '--dry-run', tmp_path / 'staged')
    assert again.returncode == 2 and 'not empty' in again.stderr


def test_private_branch_and_commit_message(hub, trained_run, hub_here):
    proc = hub_here('push-model', trained_run, 'tester/magsd-private', '--private', '--revision', 'exp',
                     '--commit-message', 'first try')
    assert proc.returncode == 0, proc.stderr
    repo = hub.repo('tester/magsd-private')
    assert repo.private
    assert [c.title for c in repo.history('exp')][0] == 'first try'
    assert 'model.safetensors' in repo.commits[repo.branches['exp']].files
    assert set(repo.commits[repo.branches['main']].files) == {'.gitattributes'}  # main untouched


def test_a_push_that_fails_leaves_the_repo_and_the_output_as_they_were_and_can_be_retried(hub, trained_run, hub_here):
    assert hub_here('push-model', trained_run, 'tester/magsd-retry').returncode == 0
    repo = hub.repo('tester/magsd-retry')
    head, local = repo.branches['main'], _digest(trained_run)

    hub.fail_next('POST', r'/api/models/tester/magsd-retry/commit/')  # after the LFS upload, at the commit
    failed = hub_here('push-model', trained_run, 'tester/magsd-retry', '--license', 'cc-by-4.0')
    assert failed.returncode == 1
    assert 'Nothing was committed' in failed.stderr and 'HTTP 500' in failed.stderr
    _no_token(failed)
    assert repo.branches['main'] == head and _digest(trained_run) == local

    retried = hub_here('push-model', trained_run, 'tester/magsd-retry', '--license', 'cc-by-4.0')
    assert retried.returncode == 0, retried.stderr
    history = repo.history()
    assert len(history) == 3 and history[1].oid == head  # exactly one commit more, on top of the old head
    assert 'license: cc-by-4.0' in hub.file('tester/magsd-retry', 'README.md').decode()
    assert _digest(trained_run) == local


def test_a_network_failure_during_a_push_says_nothing_was_committed(hub, trained_run, capsys):
    from magsd_timm.cli.magsd_hub import main

    assert main(['push-model', str(trained_run), 'tester/magsd-drop']) == 0
    repo = hub.repo('tester/magsd-drop')
    head = repo.branches['main']
    capsys.readouterr()
    hub.fail_next('POST', r'/api/models/tester/magsd-drop/commit/', status=None)  # the connection just drops
    assert main(['push-model', str(trained_run), 'tester/magsd-drop', '--license', 'cc-by-4.0']) == 1
    failed = capsys.readouterr()
    assert 'Traceback' not in failed.err and failed.err.count('\n') == 1
    assert 'Nothing was committed' in failed.err and 'HTTP' not in failed.err
    assert TOKEN not in failed.out + failed.err
    assert repo.branches['main'] == head


@pytest.mark.parametrize('corrupt, message', [
    (lambda c, w: c.update(temperature=-1), 'temperature -1 is invalid'),
    (lambda c, w: c.update(temperature=0), 'temperature 0 is invalid'),
    (lambda c, w: w['fc.weight'].fill_(float('nan')), 'fc.weight: holds NaN'),
])
def test_a_checkpoint_with_invalid_values_is_not_pushed(hub, trained_run, tmp_path, corrupt, message, capsys):
    from safetensors.torch import save_file

    from magsd_timm.cli.magsd_hub import main

    checkpoint = tmp_path / 'bad'
    shutil.copytree(trained_run / 'best', checkpoint)
    config, weights = json.loads((checkpoint / 'config.json').read_text()), load_file(checkpoint / 'model.safetensors')
    corrupt(config, weights)
    (checkpoint / 'config.json').write_text(json.dumps(config))
    save_file(weights, checkpoint / 'model.safetensors')
    assert main(['push-model', str(checkpoint), 'tester/magsd-invalid']) == 2
    assert message in capsys.readouterr().err
    assert ('model', 'tester/magsd-invalid') not in hub.repos


def test_a_checkpoint_with_only_pickle_weights_is_not_pushed(hub, trained_run, tmp_path, hub_here):
    checkpoint = tmp_path / 'pickled'
    shutil.copytree(trained_run / 'best', checkpoint)
    torch.save(load_file(checkpoint / 'model.safetensors'), checkpoint / 'pytorch_model.bin')
    (checkpoint / 'model.safetensors').unlink()
    proc = hub_here('push-model', checkpoint, 'tester/magsd-pickle')
    assert proc.returncode == 2
    assert 'pytorch_model.bin' in proc.stderr and 'only safetensors' in proc.stderr
    assert ('model', 'tester/magsd-pickle') not in hub.repos


def test_a_missing_checkpoint_is_named(tmp_path, hub_here):
    proc = hub_here('push-model', tmp_path, 'tester/none')
    assert proc.returncode == 2 and f"No checkpoint in '{tmp_path}'" in proc.stderr


@pytest.fixture(scope='module')
def prepared(tmp_path_factory) -> Path:
    from magsd_timm.data import sample_records
    from magsd_timm.data.build import build_dataset

    out = tmp_path_factory.mktemp('prepared') / 'kermany16'
    build_dataset(sample_records(), out, seed=0, pretty_name='Kermany sample')
    return out


def test_push_dataset_round_trips_through_load_dataset_with_its_card(hub, prepared, hub_here):
    import datasets
    from huggingface_hub import DatasetCard

    from magsd_timm.data import open_dataset
    from magsd_timm.data.build import load_prepared

    local = _digest(prepared)
    proc = hub_here('push-dataset', prepared, 'tester/cxr', '--private')
    assert proc.returncode == 0, proc.stderr
    _no_token(proc)
    repo = hub.repo('tester/cxr', 'dataset')
    assert repo.private and len(repo.history()) == 2 and _digest(prepared) == local
    files = set(repo.commits[repo.branches['main']].files)
    assert {'README.md', 'splits.json', 'skipped.json', 'data/train-00000-of-00001.parquet'} <= files

    pulled, built = datasets.load_dataset('tester/cxr'), load_prepared(prepared)
    assert set(pulled) == set(built)
    for split in built:
        assert pulled[split].features == built[split].features
        assert pulled[split].with_format('arrow')[:].equals(built[split].with_format('arrow')[:]), split

    card = DatasetCard.load('tester/cxr', repo_type='dataset')
    assert card.data.license == 'cc-by-4.0' and card.data.pretty_name == 'Kermany sample'
    assert card.data.class_names == ['bacterial pneumonia', 'normal']
    assert card.data.configs[0]['data_files'][0]['path'] == 'data/train-*'
    assert '## Known biases' in card.content

    images, local_images = open_dataset('hf-hub:tester/cxr', 'train'), open_dataset(prepared, 'train')
    assert images.class_names == local_images.class_names == ['bacterial pneumonia', 'normal']
    assert images.labels() == local_images.labels()
    assert all(torch.equal(images[i][0], local_images[i][0]) for i in range(len(images)))


@pytest.mark.parametrize('repo_id, revision, message', [
    ('tester/model', '../main', 'Invalid revision'), ('tester/model', 'refs/../../x', 'Invalid revision'),
    ('tester/model', '/abs', 'Invalid revision'), ('not a repo id', None, 'Invalid Hub repo id'),
])
def test_push_targets_are_checked_like_pull_targets_before_any_request(hub, trained_run, prepared, hub_here,
                                                                        repo_id, revision, message):
    requests = len(hub.requests)
    for command, folder in (('push-model', trained_run), ('push-dataset', prepared)):
        proc = hub_here(command, folder, repo_id, *(['--revision', revision] if revision else []))
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count('\n') == 1, proc.stderr
    assert len(hub.requests) == requests
