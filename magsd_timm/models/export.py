"""Export a model to ONNX or TorchScript with a dynamic batch dimension, and check it against eager.

The check runs the exported file at another batch size than the export's, so a batch dimension
that was frozen in shows up as an error, and compares the logits with the eager model's. The file
is written beside its destination and only moved there when the check passes: an existing export is
never replaced by a wrong one.
"""
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..utils.outputs import atomic_path

__all__ = ['ExportCheck', 'export_model']

FORMATS = ('onnx', 'torchscript')


@dataclass
class ExportCheck:
    """How the exported file compares with the eager model on a batch of another size."""
    path: Path
    method: str
    batch_size: int
    max_abs_diff: float
    max_abs_logit: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


class _Rejected(Exception):
    """An export whose logits differ from eager's: it must not take the destination's place."""

    def __init__(self, result: ExportCheck):
        super().__init__(f'{result.path}: max |diff| {result.max_abs_diff} > {result.tolerance}')
        self.result = result


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the exporter's progress notes and deprecations, not problems
        torch.onnx.export(model, (example,), str(path), input_names=['input'], output_names=['logits'], dynamo=True,
                          dynamic_shapes={'x': {0: torch.export.Dim('batch', min=1, max=4096)}}, verbose=False,
                          external_data=False)  # one self-contained file (MA-Nets are far below ONNX's 2 GB)
    return 'torch.onnx.export (dynamo)'


def _run_onnx(path: Path, images: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return torch.from_numpy(session.run(None, {'input': images.numpy()})[0])


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # TorchScript is deprecated in torch, still widely deployed
        try:
            exported, method = torch.jit.script(model), 'torch.jit.script'
        except Exception:  # noqa: BLE001 - some timm backbones are not scriptable (ViT's feature getter): trace
            warnings.simplefilter('ignore')
            exported, method = torch.jit.trace(model, example), 'torch.jit.trace'
    exported.save(str(path))
    return method


def _run_torchscript(path: Path, images: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        return torch.jit.load(str(path))(images)


def export_model(model: nn.Module, path: Path, fmt: str, input_size: Sequence[int], rtol: float = 1e-4
                 ) -> ExportCheck:
    """Export model (eval, CPU, fp32) and check the file's logits on a batch of 3 against eager's; path if it passes."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format '{fmt}': choose one of {', '.join(FORMATS)}.")
    if fmt == 'onnx':  # before any work: a missing module names the export extra (console.missing_extra)
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    model = model.eval().float().cpu()
    path = Path(path)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, *input_size, generator=generator)
    check = torch.randn(3, *input_size, generator=generator)
    try:
        with atomic_path(path, f'{fmt} export') as staged:
            with torch.no_grad():
                method = (_export_onnx if fmt == 'onnx' else _export_torchscript)(model, example, staged)
                expected = model(check)
                got = (_run_onnx if fmt == 'onnx' else _run_torchscript)(staged, check)
            scale = float(expected.abs().max())
            result = ExportCheck(path, method, check.shape[0], float((got - expected).abs().max()), scale,
                                 rtol * max(scale, 1.0))
            if not result.ok:
                raise _Rejected(result)
    except _Rejected as rejected:  # the staged file is gone and an earlier export untouched
        return rejected.result
    return result
