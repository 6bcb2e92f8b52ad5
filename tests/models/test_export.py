"""Exports run at another batch size than they were made with, match eager, and never replace a file when wrong."""
import onnxruntime
import timm
import torch

import magsd_timm  # noqa: F401  (registers the models)
from magsd_timm.models.export import export_model


def _model():
    torch.manual_seed(0)
    return timm.create_model('magsd_custom', backbone='test_resnet', num_maps=4, num_classes=3).eval()


def test_onnx_has_a_dynamic_batch_and_the_eager_logits(tmp_path):
    model = _model()
    check = export_model(model, tmp_path / 'm.onnx', 'onnx', (1, 64, 64))
    assert check.ok and check.batch_size == 3 and (tmp_path / 'm.onnx').exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['m.onnx']  # self-contained, nothing partial left
    session = onnxruntime.InferenceSession(str(tmp_path / 'm.onnx'))
    images = torch.randn(5, 1, 64, 64)
    got = torch.from_numpy(session.run(None, {'input': images.numpy()})[0])
    torch.testing.assert_close(got, model(images).detach(), rtol=1e-4, atol=1e-4)


def test_torchscript_runs_any_batch(tmp_path):
    model = _model()
    check = export_model(model, tmp_path / 'm.pt', 'torchscript', (1, 64, 64))
    assert check.ok and check.method == 'torch.jit.script'
    images = torch.randn(4, 1, 64, 64)
    torch.testing.assert_close(torch.jit.load(str(tmp_path / 'm.pt'))(images), model(images).detach())


def test_a_failed_check_leaves_the_existing_file(tmp_path):
    (tmp_path / 'm.pt').write_bytes(b'previous export')
    check = export_model(_model(), tmp_path / 'm.pt', 'torchscript', (1, 64, 64), rtol=-1.)  # nothing can pass
    assert not check.ok
    assert (tmp_path / 'm.pt').read_bytes() == b'previous export' and len(list(tmp_path.iterdir())) == 1
