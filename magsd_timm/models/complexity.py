"""How big a model is: parameters and multiply-accumulates per image, as timm's model cards report them."""
from typing import Optional, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['count_macs', 'count_parameters']


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: torch.nn.Module, input_size: Optional[Sequence[int]] = None) -> int:
    """Multiply-accumulates of one forward pass on one image of input_size (C, H, W; default: the model's cfg)."""
    size = tuple(input_size or model.pretrained_cfg['input_size'])
    param = next(model.parameters())
    was_training = model.training
    model.eval()  # no BatchNorm statistics are updated by the counting pass
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros((1, *size), device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
