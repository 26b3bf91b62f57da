"""The ResNet ladder of "Bag of Tricks", Table 5, on timm's ``ResNet``.

He et al., "Bag of Tricks for Image Classification with Convolutional Neural Networks", CVPR 2019,
arXiv:1812.01187, Sec. 4.2 and Fig. 2 describe three tweaks of the original ResNet (He et al. 2016,
arXiv:1512.03385; Sec. 4.1 and Fig. 1 of the paper), compared in Table 5:

* ResNet (``resnet50a_tricks``): 7x7 stem; a downsampling bottleneck puts its stride 2 on the first 1x1 conv of
  path A, and its shortcut (path B) is a 1x1 conv with stride 2.
* ResNet-B (``resnet50b_tricks``): the stride moves from the first 1x1 conv to the 3x3 conv, so path A no longer
  ignores three quarters of its input. This is timm's (and torchvision's) default ``Bottleneck``.
* ResNet-C (``resnet50c_tricks``): the 7x7 stem conv is replaced by three 3x3 convs with widths 32, 32 and 64, the
  first with stride 2 (timm ``stem_type='deep'``, ``stem_width=32``).
* ResNet-D (``resnet50d_tricks`` and the 18/34/101/152 depths): the shortcut of a downsampling block becomes a 2x2
  average pool with stride 2 followed by a 1x1 conv with stride 1 (timm ``avg_down=True``).

Every variant also takes the two initialisation switches the paper studies:

* ``zero_gamma`` (Sec. 3.1, "Zero gamma"): the last BN of every residual branch starts with gamma = 0, so each block
  starts as an identity. It is timm's ``zero_init_last``; on by default as in timm.
* ``init``: ``'kaiming'`` is timm's default (Kaiming normal, fan-out, on convs). ``'xavier'`` is the paper's baseline
  (Sec. 2.1): conv and fully connected weights drawn from U[-a, a] with a = sqrt(6 / (d_in + d_out)), BN gamma 1 and
  beta 0. We read d_in / d_out as PyTorch's (and MXNet's ``Xavier``) fan-in / fan-out, which include the kernel's
  receptive field (``torch.nn.init.xavier_uniform_``); the paper's text says "channel sizes".

The initialisation runs inside the constructor, so ``timm.create_model(..., pretrained=True)`` loads a checkpoint over
it afterwards.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from ..choices import INIT_SCHEMES  # valid values of the ``init`` argument

__all__ = [
    'INIT_SCHEMES',
    'BottleneckStrideFirst',
    'ResNetTricks',
    'xavier_init_',
    'zero_gamma_',
]

_BOT_PAPER = 'Bag of Tricks for Image Classification with Convolutional Neural Networks'
_BOT_ARXIV = 'arXiv:1812.01187'


def xavier_init_(module: nn.Module) -> nn.Module:
    """Apply the "Bag of Tricks" baseline initialisation (arXiv:1812.01187, Sec. 2.1) in place.

    Conv and linear weights ~ U[-a, a] with a = sqrt(6 / (fan_in + fan_out)) (``torch.nn.init.xavier_uniform_``),
    their biases 0; BatchNorm / GroupNorm gamma 1 and beta 0.

    Args:
        module: Module whose submodules (including itself) are initialised.

    Returns:
        The same module, for chaining.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def zero_gamma_(module: nn.Module) -> nn.Module:
    """Zero the gamma of the last BN of every residual branch (arXiv:1812.01187, Sec. 3.1) in place.

    Uses the ``zero_init_last`` hook timm's ``BasicBlock`` (``bn2``) and ``Bottleneck`` (``bn3``) provide.

    Args:
        module: Module whose residual blocks are re-initialised.

    Returns:
        The same module, for chaining.
    """
    for m in module.modules():
        if hasattr(m, 'zero_init_last'):
            m.zero_init_last()
    return module


class BottleneckStrideFirst(Bottleneck):
    """The original ResNet bottleneck (arXiv:1512.03385): stride on the first 1x1 conv of a downsampling block.

    Bag of Tricks (arXiv:1812.01187, Sec. 4.1, Fig. 1) describes this as the baseline "ResNet-50"; timm's
    ``Bottleneck`` is the ResNet-B layout (stride on the 3x3 conv). Everything else, names included, is timm's
    block, so weights are interchangeable with ``resnet50`` (only the stride differs).
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, *args: Any, **kwargs: Any) -> None:
        """Build the block.

        Args:
            inplanes: Input channels.
            planes: Bottleneck width before the x4 expansion.
            stride: Stride of the block, applied by ``conv1`` (1x1).
            *args: Passed to timm's ``Bottleneck``.
            **kwargs: Passed to timm's ``Bottleneck``.

        Raises:
            ValueError: With an anti-aliasing layer, which filters after the strided 3x3 conv and has no
                meaning for a strided 1x1 conv.
        """
        super().__init__(inplanes, planes, stride, *args, **kwargs)
        if stride == 1:
            return
        if not isinstance(self.aa, nn.Identity):
            raise ValueError(
                f'aa_layer={kwargs.get("aa_layer")!r} is not supported with the stride on the first 1x1 conv '
                '(resnet50a_tricks); valid choices: aa_layer=None, or use the B/C/D variants')
        c1, c2 = self.conv1, self.conv2
        dd = dict(device=c1.weight.device, dtype=c1.weight.dtype)
        self.conv1 = nn.Conv2d(c1.in_channels, c1.out_channels, kernel_size=1, stride=stride, bias=False, **dd)
        self.conv2 = nn.Conv2d(
            c2.in_channels, c2.out_channels, kernel_size=3, stride=1, padding=c2.padding,
            dilation=c2.dilation, groups=c2.groups, bias=False, **dd)


class ResNetTricks(ResNet):
    """timm ``ResNet`` with the Bag of Tricks initialisation switches (arXiv:1812.01187, Sec. 2.1 and 3.1).

    Accepts every keyword of timm's ``ResNet`` plus ``init`` and ``zero_gamma``.
    """

    def __init__(
            self,
            block: type[nn.Module],
            layers: tuple[int, ...],
            *,
            init: str = 'kaiming',
            zero_gamma: bool | None = None,
            **kwargs: Any,
    ) -> None:
        """Build the network.

        Args:
            block: Residual block class (``BasicBlock``, ``Bottleneck`` or ``BottleneckStrideFirst``).
            layers: Blocks per stage.
            init: Weight initialisation, one of ``INIT_SCHEMES``: ``'kaiming'`` (timm's default) or
                ``'xavier'`` (the paper's baseline, Sec. 2.1).
            zero_gamma: Zero the last BN gamma of every residual branch (Sec. 3.1). ``None`` uses timm's
                ``zero_init_last`` (default True); the two must agree when both are given.
            **kwargs: Any keyword of timm's ``ResNet`` (``num_classes``, ``stem_type``, ``avg_down``, ...).

        Raises:
            ValueError: For an unknown ``init`` or contradicting ``zero_gamma`` / ``zero_init_last``.
        """
        if init not in INIT_SCHEMES:
            raise ValueError(f'Unknown init scheme {init!r}; valid choices: {", ".join(INIT_SCHEMES)}')
        if zero_gamma is not None:
            if 'zero_init_last' in kwargs and bool(kwargs['zero_init_last']) != bool(zero_gamma):
                raise ValueError(
                    f'zero_gamma={zero_gamma!r} contradicts zero_init_last={kwargs["zero_init_last"]!r}; '
                    'pass only one of them')
            kwargs['zero_init_last'] = bool(zero_gamma)
        output_stride = kwargs.get('output_stride', 32)
        if output_stride not in (8, 16, 32):
            raise ValueError(f'Unsupported output_stride={output_stride!r}; valid choices: 8, 16, 32')
        # ResNet.__init__ ends with self.init_weights(), which reads the scheme: set it first (a plain attribute
        # may be set before nn.Module.__init__).
        self.init_scheme = init
        super().__init__(block, layers, **kwargs)
        self.zero_gamma = bool(kwargs.get('zero_init_last', True))

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = True) -> None:
        """Initialise with ``self.init_scheme``, then zero the last BN gammas if asked (zero gamma goes last).

        Args:
            zero_init_last: Zero the last BN gamma of every residual branch.
        """
        scheme = getattr(self, 'init_scheme', 'kaiming')
        if scheme == 'kaiming':
            super().init_weights(zero_init_last=zero_init_last)  # timm: kaiming normal fan-out, then zero gamma
            return
        xavier_init_(self)
        if zero_init_last:
            zero_gamma_(self)


def _create_resnet_tricks(variant: str, pretrained: bool = False, **kwargs: Any) -> ResNetTricks:
    return build_model_with_cfg(ResNetTricks, variant, pretrained, **kwargs)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """Pretrained cfg: 224 crops of a 256 resize (crop 0.875), ImageNet mean/std (arXiv:1812.01187, Sec. 2.1)."""
    return {
        'url': '',
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1.0', 'classifier': 'fc',
        'paper_ids': _BOT_ARXIV, 'paper_name': _BOT_PAPER,
        'origin_url': 'https://arxiv.org/abs/1812.01187',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'resnet50a_tricks': _cfg(
        first_conv='conv1', paper_ids=('arXiv:1512.03385', _BOT_ARXIV),
        notes=('Table 5 of arXiv:1812.01187 reports 76.21 top-1 (unverified)',)),
    'resnet50b_tricks': _cfg(first_conv='conv1', notes=('Table 5 reports 76.66 top-1 (unverified)',)),
    'resnet50c_tricks': _cfg(notes=('Table 5 reports 76.87 top-1 (unverified)',)),
    'resnet50d_tricks': _cfg(notes=('Table 5 reports 77.16 top-1 (unverified)',)),
    'resnet18d_tricks': _cfg(),
    'resnet34d_tricks': _cfg(),
    'resnet101d_tricks': _cfg(),
    'resnet152d_tricks': _cfg(),
})

_DEEP_STEM = dict(stem_type='deep', stem_width=32)  # Sec. 4.2 ResNet-C: 3x3 convs of widths 32, 32, 64
_D_LAYOUT = dict(_DEEP_STEM, avg_down=True)  # Sec. 4.2 ResNet-D: 2x2 avg pool, stride 2, then 1x1 conv stride 1


@register_model
def resnet50a_tricks(pretrained: bool = False, **kwargs: Any) -> ResNetTricks:
    """ResNet-50 as first published: 7x7 stem, stride on the first 1x1 conv (arXiv:1812.01187, Fig. 1)."""
    model_args = dict(block=BottleneckStrideFirst, layers=(3, 4, 6, 3))
    return _create_resnet_tricks('resnet50a_tricks', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50b_tricks(pretrained: bool = False, **kwargs: Any) -> ResNetTricks:
    """ResNet-50-B: stride on the 3x3 conv of path A (arXiv:1812.01187, Fig. 2a); the same layout as timm resnet50."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return _create_resnet_tricks('resnet50b_tricks', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50c_tricks(pretrained: bool = False, **kwargs: Any) -> ResNetTricks:
    """ResNet-50-C: B plus a stem of three 3x3 convs, widths 32, 32, 64 (arXiv:1812.01187, Fig. 2b)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), **_DEEP_STEM)
    return _create_resnet_tricks('resnet50c_tricks', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50d_tricks(pretrained: bool = False, **kwargs: Any) -> ResNetTricks:
    """ResNet-50-D: C plus an average-pool shortcut on downsampling blocks (arXiv:1812.01187, Fig. 2c)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), **_D_LAYOUT)
    return _create_resnet_tricks('resnet50d_tricks', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet18d_tricks(pretrained: bool = False, **kwargs: Any) -> ResNetTricks:
    """ResNet-18-D: basic blocks (2, 2, 2, 2) with the C stem and D shortcut (arXiv:1812.01187, Sec. 4.2)."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2), **_D_LAYOUT)
    return _create_resnet_tricks('resnet18d_tricks', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet34d_tricks(pretrained: bool = False, **kwargs: Any) -> ResNetTricks:
    """ResNet-34-D: basic blocks (3, 4, 6, 3) with the C stem and D shortcut (arXiv:1812.01187, Sec. 4.2)."""
    model_args = dict(block=BasicBlock, layers=(3, 4, 6, 3), **_D_LAYOUT)
    return _create_resnet_tricks('resnet34d_tricks', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet101d_tricks(pretrained: bool = False, **kwargs: Any) -> ResNetTricks:
    """ResNet-101-D: bottlenecks (3, 4, 23, 3) with the C stem and D shortcut (arXiv:1812.01187, Sec. 4.2)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 23, 3), **_D_LAYOUT)
    return _create_resnet_tricks('resnet101d_tricks', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet152d_tricks(pretrained: bool = False, **kwargs: Any) -> ResNetTricks:
    """ResNet-152-D: bottlenecks (3, 8, 36, 3) with the C stem and D shortcut (a ResNet-152 is the distillation
    teacher of arXiv:1812.01187, Sec. 5.5)."""
    model_args = dict(block=Bottleneck, layers=(3, 8, 36, 3), **_D_LAYOUT)
    return _create_resnet_tricks('resnet152d_tricks', pretrained, **dict(model_args, **kwargs))

