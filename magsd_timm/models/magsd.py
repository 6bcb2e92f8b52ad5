"""MA-Net: the Multiscale Attention Network of MAG-SD, over any timm backbone.

Paper: `Multiscale Attention Guided Network for COVID-19 Diagnosis Using Chest X-ray Images`
(Li et al., IEEE JBHI 2021, arXiv 2012.02278).

The network takes a timm backbone built with ``features_only=True``. Each chosen feature level
predicts M attention maps (1x1 conv, BatchNorm, ReLU); the maps of the lower levels are average
pooled to the top level's size and summed. Bilinear attention pooling (BAP, as in WS-DAN) of the
top level's features by those maps, a signed square root, L2 normalisation and a x100 scale feed one
bias-free linear classifier.

timm's API maps onto MA-Net as follows:
* ``forward_features`` returns the top-level feature map and the attention maps stacked along the
  channels, ``(B, C + M, h, w)``, so that ``forward_head`` can pool one with the other;
  ``num_features`` is ``C + M``.
* ``forward_head(pre_logits=True)`` returns the scaled, normalised BAP embedding,
  ``head_hidden_size = M * C`` wide.
* ``global_pool`` is ``'bap'`` (the method) or ``''`` (no pooling, no classifier: the stacked maps).
* ``forward_with_attention`` returns the logits and the attention maps of one single pass.
"""
import difflib
import inspect
import re
import warnings
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_function
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg

from ..errors import BadInputError
from .config import check_head_size, check_input_size, check_model_args
from .offline_weights import create_pretrained, say_source
from .published import PUBLISHED_KEYS, published_file
from .timm_private import FeatureGetterNet, feature_take_indices
from .weights import WeightsMismatchError, check_state_dict, require_safe_weights

__all__ = ['MANet', 'UntrainedClassifierWarning', 'bilinear_attention_pool', 'close_matches', 'display_map', 'grey_input',
           'CXR_LABEL_NAMES']

CXR_LABEL_NAMES = ('COVID-19', 'viral pneumonia', 'bacterial pneumonia', 'normal')

# The stem of a pretrained backbone is adapted to one channel by summing its RGB filters, so a grey
# input is normalised with the mean of ImageNet's channel statistics.
CXR_GREY_MEAN = (round(sum(IMAGENET_DEFAULT_MEAN) / 3, 4),)
CXR_GREY_STD = (round(sum(IMAGENET_DEFAULT_STD) / 3, 4),)


def _cfg(first_conv: str = 'backbone.conv1', **kwargs: Any) -> Dict[str, Any]:
    """Create a default configuration for MA-Net models (no CXR weights: the backbone's are used)."""
    return {
        'num_classes': len(CXR_LABEL_NAMES), 'label_names': CXR_LABEL_NAMES,
        'input_size': (1, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 1.0, 'crop_mode': 'squash', 'interpolation': 'bilinear',  # the whole film, as the trainer sees it
        'mean': CXR_GREY_MEAN, 'std': CXR_GREY_STD,
        'first_conv': first_conv, 'classifier': 'fc',
        'license': 'apache-2.0',
        'paper_name': 'Multiscale Attention Guided Network for COVID-19 Diagnosis Using Chest X-ray Images',
        'paper_ids': 'arXiv:2012.02278', 'origin_url': 'https://arxiv.org/abs/2012.02278',
        **kwargs,
    }


# Published MA-Net weights, as 'magsd_<arch>.<tag>': timm's cfg of the checkpoint (hf_hub_id, num_classes,
# label_names, ...), the folder of hub/ that holds the same files inside the package, and the SHA-256 of its
# model.safetensors (models/published.py). The untagged name stays the architecture with its backbone's ImageNet
# weights: a trained classifier is asked for by its tag, never given in its place (docs/model.md).
HUB_WEIGHTS: Dict[str, Dict[str, Any]] = {
    # all the shared chest X-rays, the recommended recipe (hub/magsd_efficientnet_lite0.cxr_v1/README.md);
    # research only: part of its training data is non-commercial
    'magsd_efficientnet_lite0.cxr_v1': {
        'input_size': [1, 128, 128], 'fixed_input_size': False, 'interpolation': 'bilinear', 'crop_pct': 1.0,
        'crop_mode': 'squash', 'mean': [0.5], 'std': [0.5], 'num_classes': 4,
        'label_names': ['COVID-19', 'bacterial pneumonia', 'normal', 'viral pneumonia'],
        'pool_size': [4, 4],  # at 128 px (its config.json, saved before the trainer recorded it, says null)
        'first_conv': 'backbone.conv_stem', 'classifier': 'fc', 'license': 'other',
        'origin_url': 'https://arxiv.org/abs/2012.02278',
        'paper_name': 'Multiscale Attention Guided Network for COVID-19 Diagnosis Using Chest X-ray Images',
        'paper_ids': 'arXiv:2012.02278', 'hf_hub_id': 'magsd-timm/magsd_efficientnet_lite0.cxr_v1',
        'folder': 'magsd_efficientnet_lite0.cxr_v1',
        'sha256': '1272566df70ea6e531c9555969a4523c7eabf3c0e89d5770752a516f4bf64823',
    },
}

_ARCH_CFGS = {
    'magsd_resnet18': _cfg(),
    'magsd_resnet34': _cfg(),
    'magsd_resnet50': _cfg(),
    'magsd_resnet101': _cfg(),
    'magsd_densenet121': _cfg(first_conv='backbone.features_conv0'),
    'magsd_efficientnet_b0': _cfg(first_conv='backbone.conv_stem'),
    'magsd_efficientnet_lite0': _cfg(first_conv='backbone.conv_stem', mean=(0.5,), std=(0.5,)),
    'magsd_efficientnet_lite1': _cfg(first_conv='backbone.conv_stem', mean=(0.5,), std=(0.5,),
                                     input_size=(1, 240, 240), pool_size=(8, 8)),
    'magsd_efficientnet_lite2': _cfg(first_conv='backbone.conv_stem', mean=(0.5,), std=(0.5,),
                                     input_size=(1, 260, 260), pool_size=(9, 9)),
    'magsd_efficientnetv2_rw_s': _cfg(first_conv='backbone.conv_stem'),
    'magsd_mobilenetv3_large_100': _cfg(first_conv='backbone.conv_stem'),
    'magsd_convnext_tiny': _cfg(first_conv='backbone.stem_0'),
    'magsd_regnety_016': _cfg(first_conv='backbone.stem.conv'),
    'magsd_vit_small_patch16_224': _cfg(first_conv='backbone.model.patch_embed.proj', pool_size=(14, 14)),
    'magsd_custom': _cfg(),
}


def _default_cfgs(hub_weights: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """timm's default cfgs: one untagged cfg per architecture, and one tag per published Hub repo."""
    tagged = {name: dict(_ARCH_CFGS[name.split('.')[0]], **{k: v for k, v in cfg.items() if k not in PUBLISHED_KEYS})
              for name, cfg in hub_weights.items()}
    cfgs = generate_default_cfgs({**_ARCH_CFGS, **tagged})
    for cfg in cfgs.values():  # timm makes a tag with weights the default; the untagged name stays the architecture
        cfg.tags.remove('')
        cfg.tags.appendleft('')
    return cfgs


default_cfgs = _default_cfgs(HUB_WEIGHTS)


def bilinear_attention_pool(features: torch.Tensor, attention: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pool features (B, C, h, w) by attention maps (B, M, h, w) into the normalised (B, M*C) BAP vector."""
    b, c, h, w = features.shape
    m = attention.shape[1]
    pooled = torch.bmm(attention.flatten(2), features.flatten(2).transpose(1, 2)) / (h * w)
    pooled = pooled.reshape(b, m * c)  # m-major, as WS-DAN and the authors flatten it
    pooled = torch.sign(pooled) * torch.sqrt(pooled.abs() + eps)
    return F.normalize(pooled, dim=-1)


def display_map(attention: torch.Tensor, size: Union[int, Tuple[int, int]]) -> torch.Tensor:
    """Mean of the M attention maps (B, M, h, w), upsampled bilinearly to the input size: (B, 1, H, W)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    mean_map = attention.float().mean(dim=1, keepdim=True)
    return F.interpolate(mean_map, size=size, mode='bilinear', align_corners=False)


@register_notrace_function  # FX cannot branch on a traced tensor's shape
def grey_input(x: torch.Tensor) -> torch.Tensor:
    """An RGB or RGBA batch (B, 3 or 4, H, W) as grey (B, 1, H, W) by ITU-R BT.601 luma, alpha dropped, as PIL's
    convert('L') and the file reader make a colour file grey; any other batch as it is.

    Luma weights sum to 1, so a batch normalised with one mean and std for every channel (a grey model's data config
    in timm's pipeline) gives the grey batch normalised alike.
    """
    if x.shape[1] == 3 or x.shape[1] == 4:
        luma = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
        x = (x[:, :3] * luma.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    return x


@register_notrace_function  # FX cannot trace a size taken from a traced tensor's shape
def _pool_to(maps: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Average pool maps to the spatial size of reference (2x2 pooling for strides 16 -> 32)."""
    return F.adaptive_avg_pool2d(maps, reference.shape[-2:])


def close_matches(name: str, candidates: Sequence[str]) -> str:
    """A sentence naming the candidates close to name (" Close matches: a, b."), or an empty string."""
    matches = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    return f" Close matches: {', '.join(matches)}." if matches else ''


def _create_backbone(name: str, in_chans: int, backbone_kwargs: Dict[str, Any], **kwargs: Any) -> nn.Module:
    """Build a timm backbone as a multiscale feature extractor, or say clearly why it cannot serve."""
    arch = name.split('.')[0]
    if not timm.is_model(arch):
        raise ValueError(f"Unknown timm backbone '{name}'.{close_matches(arch, timm.list_models())}")
    try:
        return timm.create_model(name, features_only=True, in_chans=in_chans, **backbone_kwargs, **kwargs)
    except (RuntimeError, AssertionError, NotImplementedError, AttributeError) as e:
        raise ValueError(
            f"Backbone '{name}' cannot serve MA-Net: timm cannot build it as a multiscale feature "
            f"extractor (features_only=True failed: {e})."
        ) from e


def _backbone_path(backbone: nn.Module, module_name: str) -> str:
    """Name, inside the feature extractor, of a module named as in the original timm model."""
    candidates = (module_name, module_name.replace('.', '_'), f'model.{module_name}')
    for candidate in candidates:
        try:
            backbone.get_submodule(candidate)
            return candidate
        except AttributeError:
            continue
    raise ValueError(f"Module '{module_name}' of the backbone is not found in its feature extractor.")


def _stage_of_parameters(backbone: nn.Module) -> Dict[str, int]:
    """Map each backbone parameter to the feature level it feeds (0 = stem, up to the last level)."""
    level_paths = [_backbone_path(backbone, n) for n in backbone.feature_info.module_name()]

    def level_of(module_name: str) -> Optional[int]:
        for i, path in enumerate(level_paths):
            if module_name == path or module_name.startswith(path + '.'):
                return i
        return None

    stages: Dict[str, int] = {}
    pending: List[str] = []  # parameters met before the level they feed (e.g. a stem conv, a transition)
    for module_name, module in backbone.named_modules():
        level = level_of(module_name)
        if level is not None:
            stages.update({n: level for n in pending})
            pending = []
        for param_name, _ in module.named_parameters(recurse=False):
            full_name = f'{module_name}.{param_name}' if module_name else param_name
            if level is None:
                pending.append(full_name)
            else:
                stages[full_name] = level
    stages.update({n: len(level_paths) - 1 for n in pending})
    return stages


class MANet(nn.Module):
    """MA-Net: multiscale attention maps, bilinear attention pooling and one linear classifier."""

    def __init__(
            self,
            backbone: str = 'resnet50',
            num_classes: int = len(CXR_LABEL_NAMES),
            in_chans: int = 1,
            num_maps: int = 32,
            attn_levels: Sequence[int] = (-2, -1),
            global_pool: str = 'bap',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            attn_drop_rate: float = 0.,
            backbone_kwargs: Optional[Dict[str, Any]] = None,
            device: Optional[Union[str, torch.device]] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        """
        Args:
            backbone: timm model name (optionally with a pretrained tag) to extract features with.
            num_classes: Number of classes of the linear classifier (0 for the BAP embedding).
            in_chans: Number of input image channels (1 for grey radiographs).
            num_maps: Attention maps M predicted at every attention level.
            attn_levels: Backbone feature levels that predict attention maps, the top one last.
            global_pool: 'bap' for bilinear attention pooling, '' for unpooled features and maps.
            drop_rate: Dropout rate before the classifier.
            drop_path_rate: Stochastic depth rate of the backbone (if it supports it).
            attn_drop_rate: In training, the chance that an attention map is left out of an image's BAP
                vector (whole maps, as Dropout2d drops channels), so that no one map carries the decision.
            backbone_kwargs: Extra JSON-serialisable arguments for the backbone's timm.create_model.
            device: Device to create parameters on.
            dtype: Data type to create parameters with.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.backbone_name = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_maps = num_maps
        self.drop_rate = drop_rate
        self.logit_scale = 100.
        self.grad_checkpointing = False

        extra = {'drop_path_rate': drop_path_rate} if drop_path_rate else {}
        self.backbone = _create_backbone(backbone, in_chans, self.backbone_kwargs, **extra, **dd)
        output_fmt = getattr(self.backbone, 'output_fmt', 'NCHW')
        self.feature_nhwc = getattr(output_fmt, 'value', output_fmt) == 'NHWC'  # e.g. Swin's levels
        channels = self.backbone.feature_info.channels()
        reductions = self.backbone.feature_info.reduction()
        num_levels = len(channels)
        levels = [i + num_levels if i < 0 else i for i in attn_levels]
        if not levels or any(not 0 <= i < num_levels for i in levels) or levels != sorted(set(levels)):
            raise ValueError(
                f'attn_levels {tuple(attn_levels)} must be distinct, ascending feature levels of '
                f"backbone '{backbone}', which has {num_levels} (0 to {num_levels - 1}).")
        if levels[-1] != num_levels - 1:
            raise ValueError(
                f'The top attention level ({levels[-1]}) must be the last feature level of backbone '
                f"'{backbone}' ({num_levels - 1}): end the backbone earlier with "
                f"backbone_kwargs={{'out_indices': (...)}} instead.")
        self.attn_levels = levels
        self.feature_info = [
            dict(num_chs=c, reduction=r, module=f'backbone.{_backbone_path(self.backbone, n)}')
            for c, r, n in zip(channels, reductions, self.backbone.feature_info.module_name())
        ]
        first_conv = self.backbone.pretrained_cfg.get('first_conv')
        if first_conv:
            convs = tuple(f'backbone.{_backbone_path(self.backbone, n)}' for n in (
                (first_conv,) if isinstance(first_conv, str) else first_conv))
            self._traits = {'first_conv': convs[0] if len(convs) == 1 else convs}

        self.attention = nn.ModuleList([
            nn.Sequential(
                nn.Conv2d(channels[i], num_maps, kernel_size=1, bias=False, **dd),
                nn.BatchNorm2d(num_maps, eps=1e-3, **dd),
                nn.ReLU(inplace=True),
            )
            for i in levels
        ])
        self.top_chs = channels[levels[-1]]
        check_head_size(num_maps, self.top_chs, num_classes)
        self.num_features = self.top_chs + num_maps
        self.head_hidden_size = num_maps * self.top_chs
        self.global_pool = self._checked_pool(global_pool, num_classes)
        self.attn_drop = nn.Dropout2d(attn_drop_rate)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.head_hidden_size, num_classes, bias=False, **dd) if num_classes > 0 else nn.Identity()

    @staticmethod
    def _checked_pool(global_pool: str, num_classes: int) -> str:
        if global_pool not in ('bap', ''):
            raise ValueError(f"MA-Net pools with 'bap' (or '' for none), not global_pool='{global_pool}'.")
        if global_pool == '' and num_classes > 0:
            raise ValueError("global_pool='' returns unpooled features and maps: it needs num_classes=0.")
        return global_pool

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Regex groups of parameters: stem, one block per backbone feature level, attention; head last.

        The feature levels are the finest split a wrapped backbone shows, so coarse and fine agree.
        """
        stages = _stage_of_parameters(self.backbone)
        num_levels = len(self.feature_info)

        def names(level: int) -> str:
            members = sorted(re.escape(n) for n, s in stages.items() if s == level)
            return r'^backbone\.(?:' + '|'.join(members) + r')$' if members else r'^$'

        blocks = [(names(i), (i,)) for i in range(1, num_levels)]
        return dict(stem=names(0), blocks=blocks + [(r'^attention\.', (num_levels,))])

    def _timm_backbone(self) -> Tuple[nn.Module, str]:
        """The timm model doing the backbone's work, and its parameters' prefix in this model."""
        if isinstance(self.backbone, FeatureGetterNet):  # wraps the whole timm model (ViT and kin)
            return self.backbone.model, 'backbone.model.'
        return self.backbone, 'backbone.'

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the backbone's activations in the backward pass to save memory."""
        self.grad_checkpointing = enable
        self._timm_backbone()[0].set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Backbone parameters that timm's own model exempts from weight decay (e.g. position embeddings)."""
        inner, prefix = self._timm_backbone()
        if not hasattr(inner, 'no_weight_decay'):
            return set()
        param_names = {n for n, _ in self.named_parameters()}
        return {prefix + n for n in inner.no_weight_decay() if prefix + n in param_names}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The linear classifier."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier (and optionally the pooling) on the model's device, dtype and mode.

        A classifier asked for on a model without pooling (num_classes=0, global_pool='') brings back the one
        pooling MA-Net classifies with, 'bap', as timm's heads do; only an explicit global_pool='' refuses it.
        """
        pool = (self.global_pool or ('bap' if num_classes > 0 else '')) if global_pool is None else global_pool
        self.global_pool = self._checked_pool(pool, num_classes)
        self.num_classes = num_classes
        ref = next(self.backbone.parameters())
        self.fc = nn.Linear(
            self.head_hidden_size, num_classes, bias=False, device=ref.device, dtype=ref.dtype,
        ) if num_classes > 0 else nn.Identity()
        self.fc.train(self.training)

    def _backbone_levels(self, x: torch.Tensor) -> List[torch.Tensor]:
        if self.in_chans == 1:  # timm's usual input, an RGB image, to a model of grey radiographs
            x = grey_input(x)
        levels = self.backbone(x)
        if self.feature_nhwc:
            levels = [level.permute(0, 3, 1, 2) for level in levels]
        return levels

    def _attention_maps(self, levels: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        top = levels[self.attn_levels[-1]]
        maps = torch.zeros_like(top[:, :1])
        for i, attend in enumerate(self.attention):
            maps = maps + _pool_to(attend(levels[self.attn_levels[i]]), top)
        return top, maps

    def forward_features_and_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Top-level features (B, C, h, w) and summed attention maps (B, M, h, w)."""
        return self._attention_maps(self._backbone_levels(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Top-level features and attention maps stacked along the channels: (B, C + M, h, w)."""
        features, attention = self.forward_features_and_attention(x)
        return torch.cat([features, attention], dim=1)

    def _pool_and_classify(self, features: torch.Tensor, attention: torch.Tensor, pre_logits: bool) -> torch.Tensor:
        x = bilinear_attention_pool(features, self.attn_drop(attention)) * self.logit_scale
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the stacked output of forward_features and classify it (or return the embedding)."""
        if not self.global_pool:
            return x
        features, attention = torch.split(x, [self.top_chs, self.num_maps], dim=1)
        return self._pool_and_classify(features, attention, pre_logits)

    def forward_with_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, K) and attention maps (B, M, h, w) from one single forward pass."""
        features, attention = self.forward_features_and_attention(x)
        return self._pool_and_classify(features, attention, pre_logits=False), attention

    @torch.jit.ignore
    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Backbone feature levels selected by indices, and (unless intermediates_only) forward_features."""
        if output_fmt != 'NCHW':
            raise ValueError(f"MA-Net intermediates are NCHW, not '{output_fmt}'.")
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        levels = self._backbone_levels(x)
        intermediates = [levels[i] for i in take_indices]
        if intermediates_only:
            return intermediates
        features, attention = self._attention_maps(levels)
        return torch.cat([features, attention], dim=1), intermediates

    @torch.jit.ignore
    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop what feature extraction does not use: the attention and the classifier when prune_head."""
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        if prune_head:
            self.reset_classifier(0, '')
            self.attention = nn.ModuleList()
        return take_indices

    def forward(self, x: torch.Tensor, return_attention: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Class logits (B, num_classes); with return_attention, also the attention maps of the same pass.

        The flag lets wrappers (DistributedDataParallel, DataParallel, torch.compile) run the MAG-SD
        objective's raw pass through their own forward, as they run every other pass. Only a real bool
        selects the maps: FX, which passes a proxy for every argument, traces the logits path.
        """
        if isinstance(return_attention, bool) and return_attention:
            return self.forward_with_attention(x)
        x = self.forward_features(x)
        return self.forward_head(x)


def _load_backbone_pretrained(model: MANet, cache_dir: Optional[str] = None) -> str:
    """Load the backbone's ImageNet weights as timm loads them (stem adapted to in_chans); say where from."""
    if not resolve_pretrained_cfg(model.backbone_name).has_weights:
        raise ValueError(
            f"Backbone '{model.backbone_name}' has no pretrained weights in timm: "
            f"use pretrained=False or a backbone tag with weights ({model.backbone_name.split('.')[0]}.<tag>).")
    source = create_pretrained(
        model.backbone_name, features_only=True, in_chans=model.in_chans, cache_dir=cache_dir, **model.backbone_kwargs)
    model.backbone.load_state_dict(source.state_dict())
    return source.pretrained_source


# what timm's factory and builder pass besides MANet's own arguments
_BUILDER_KWARGS = ('pretrained_cfg', 'pretrained_cfg_overlay', 'pretrained_model_args', 'pretrained_strict',
                   'cache_dir', 'features_only', 'out_indices', 'feature_cls', 'feature_cfg')
_warned_untrained: Set[str] = set()


class UntrainedClassifierWarning(UserWarning):
    """An MA-Net was created with pretrained=True but no chest X-ray weights exist: its classifier is untrained."""


def _published_tags(variant: str) -> List[str]:
    """The published chest X-ray models of an architecture, as full names (variant.tag)."""
    return [f'{variant}.{t}' for t in default_cfgs[variant].tags if t] if variant in default_cfgs else []


def _warn_untrained(variant: str) -> None:
    """Say once per variant that only the backbone is pretrained, as timm says of models without weights."""
    if variant in _warned_untrained:
        return
    _warned_untrained.add(variant)
    tags = _published_tags(variant)
    trained = (f"its trained chest X-ray model is asked for by its tag: {', '.join(tags)}" if tags else
               'it has no published chest X-ray weights')
    warnings.warn(
        f'{variant}: pretrained=True loads the ImageNet weights of its backbone only ({trained}), and its attention '
        'and classifier are untrained, so its class probabilities mean nothing until it is trained '
        '(recipes/train.py) or loaded from a trained checkpoint.',
        UntrainedClassifierWarning, stacklevel=4)


def _weights_source(cfg: Any, variant: str) -> str:
    return str(cfg.hf_hub_id or cfg.file or cfg.url or variant)


def _check_tag(variant: str, tag: str) -> None:
    """Refuse a tag the variant does not have, naming the ones it has."""
    tags = _published_tags(variant)
    if f'{variant}.{tag}' not in tags:
        have = (f"its published chest X-ray models are {', '.join(tags)}" if tags else
                'it has no published chest X-ray model')
        raise BadInputError(f'{variant}.{tag}: no such tag; {have}, and {variant} itself is the architecture with '
                            'its backbone\'s ImageNet weights.')


def _published_weights(variant: str, pretrained: bool, kwargs: Dict[str, Any]) -> Optional[str]:
    """For a published tag asked with pretrained=True: its checked weights file from the Hub or the package, put in
    kwargs' pretrained_cfg_overlay for timm to load, and where it came from; else None."""
    tag = kwargs.get('pretrained_cfg') if isinstance(kwargs.get('pretrained_cfg'), str) else None
    if tag:
        _check_tag(variant, tag)
    name = f'{variant}.{tag}' if tag else variant
    entry = HUB_WEIGHTS.get(name)
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
    if not pretrained or entry is None or overlay.get('file'):
        return None
    path, source = published_file(name, entry)
    say_source(name, source)
    kwargs['pretrained_cfg_overlay'] = dict(overlay, file=str(path))
    return f'{name} from {source}'


def _create_magsd(variant: str, pretrained: bool = False, **kwargs: Any) -> MANet:
    """Build an MA-Net variant; pretrained loads its safetensors weights, or without any the backbone's ImageNet weights."""
    published = _published_weights(variant, pretrained, kwargs)
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get('pretrained_cfg'), pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    where = _weights_source(cfg, variant)
    check_model_args(kwargs, [*inspect.signature(MANet).parameters, *_BUILDER_KWARGS], where)
    if cfg.input_size is not None:
        check_input_size(list(cfg.input_size), where)
    backbone_only = pretrained and not cfg.has_weights
    if pretrained and not backbone_only:
        require_safe_weights(cfg.to_dict(), kwargs.get('cache_dir'))
    try:
        model = build_model_with_cfg(
            MANet, variant, pretrained and not backbone_only,
            pretrained_filter_fn=check_state_dict,
            feature_cfg=dict(feature_cls='getter', out_indices=None),
            **kwargs,
        )
    except SafetensorError as e:
        raise WeightsMismatchError(f'The weights of {where} are not a readable safetensors file ({e}): the file is '
                                   'truncated or corrupt; download or save it again.') from e
    net = model.model if isinstance(model, FeatureGetterNet) else model
    # the cfg names the stem of the variant's usual backbone; a saved config.json must name this one's
    net.pretrained_cfg = dict(net.pretrained_cfg, first_conv=getattr(net, '_traits', {}).get('first_conv'))
    if backbone_only:
        net.pretrained_source = _load_backbone_pretrained(net, kwargs.get('cache_dir'))
        _warn_untrained(variant)
    elif pretrained:
        net.pretrained_source = published or where
    return model


def _entry(variant: str, backbone: str, pretrained: bool, kwargs: Dict[str, Any], **backbone_kwargs: Any) -> MANet:
    """Create a zoo variant; the user's kwargs override its backbone and add to its backbone_kwargs."""
    kwargs.setdefault('backbone', backbone)
    kwargs['backbone_kwargs'] = dict(backbone_kwargs, **kwargs.get('backbone_kwargs', {}))
    return _create_magsd(variant, pretrained, **kwargs)


@register_model
def magsd_resnet18(pretrained: bool = False, **kwargs) -> MANet:
    """MA-Net over ResNet-18."""
    return _entry('magsd_resnet18', 'resnet18.tv_in1k', pretrained, kwargs)


@register_model
def magsd_resnet34(pretrained: bool = False, **kwargs) -> MANet:
    """MA-Net over ResNet-34."""
    return _entry('magsd_resnet34', 'resnet34.tv_in1k', pretrained, kwargs)


@register_model
def magsd_resnet50(pretrained: bool = False, **kwargs) -> MANet:
    """MA-Net over ResNet-50 (torchvision ImageNet weights), as published: layer3 + layer4, M = 32."""
    return _entry('magsd_resnet50', 'resnet50.tv_in1k', pretrained, kwargs)


@register_model
def magsd_resnet101(pretrained: bool = False, **kwargs) -> MANet:
    """MA-Net over ResNet-101."""
    return _entry('magsd_resnet101', 'resnet101.tv_in1k', pretrained, kwargs)


@register_model
def magsd_densenet121(pretrained: bool = False, **kwargs) -> MANet:
    """MA-Net over DenseNet-121 (the CheXNet backbone)."""
    return _entry('magsd_densenet121', 'densenet121.tv_in1k', pretrained, kwargs)


@register_model
def magsd_efficientnet_b0(pretrained: bool = False, **kwargs) -> MANet:
    """MA-Net over EfficientNet-B0."""
    return _entry('magsd_efficientnet_b0', 'efficientnet_b0.ra_in1k', pretrained, kwargs)


@register_model
def magsd_efficientnet_lite0(pretrained: bool = False, **kwargs) -> MANet:
    """MA-Net over EfficientNet-Lite0 (ImageNet weights offline with the offline-weights extra)."""
    return _entry('magsd_efficientnet_lite0', 'tf_efficientnet_lite0.in1k', pretrained, kwargs)


@register_model
def magsd_efficientnet_lite1(pretrained: bool = False, **kwargs) -> MANet:
    """MA-Net over EfficientNet-Lite1 (ImageNet weights offline with the offline-weights extra)."""
    return _entry('magsd_efficientnet_lite1', 'tf_efficientnet_lite1.in1k', pretrained, kwargs)


@register_model
def magsd_efficientnet_lite2(pretrained: bool = False, **kwargs) -> MANet:
    """MA-Net over EfficientNet-Lite2 (ImageNet weights offline with the offline-weights extra)."""
    return _entry('magsd_efficientnet_lite2', 'tf_efficientnet_lite2.in1k', pretrained, kwargs)


@register_model
def magsd_efficientnetv2_rw_s(pretrained: bool = False, **kwargs) -> MANet:
    """MA-Net over EfficientNetV2-S (timm's variant)."""
    return _entry('magsd_efficientnetv2_rw_s', 'efficientnetv2_rw_s.ra2_in1k', pretrained, kwargs)


@register_model
def magsd_mobilenetv3_large_100(pretrained: bool = False, **kwargs) -> MANet:
    """MA-Net over MobileNetV3-Large."""
    return _entry('magsd_mobilenetv3_large_100', 'mobilenetv3_large_100.ra_in1k', pretrained, kwargs)


@register_model
def magsd_convnext_tiny(pretrained: bool = False, **kwargs) -> MANet:
    """MA-Net over ConvNeXt-Tiny."""
    return _entry('magsd_convnext_tiny', 'convnext_tiny.fb_in1k', pretrained, kwargs)


@register_model
def magsd_regnety_016(pretrained: bool = False, **kwargs) -> MANet:
    """MA-Net over RegNetY-1.6GF."""
    return _entry('magsd_regnety_016', 'regnety_016.tv2_in1k', pretrained, kwargs)


@register_model
def magsd_vit_small_patch16_224(pretrained: bool = False, **kwargs) -> MANet:
    """MA-Net over ViT-S/16: its last blocks share one stride; position embeddings follow the input size."""
    return _entry(
        'magsd_vit_small_patch16_224', 'vit_small_patch16_224.augreg_in21k_ft_in1k', pretrained, kwargs,
        dynamic_img_size=True)


@register_model
def magsd_custom(pretrained: bool = False, **kwargs) -> MANet:
    """MA-Net over any timm backbone with multiscale features: pass backbone='<timm name>'."""
    return _create_magsd('magsd_custom', pretrained, **kwargs)
