"""DeepLab v3+ modified aligned Xception (41 / 65 / 71) with the papers' training defaults, on timm's
``XceptionAligned``.

Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation", ECCV 2018
(DeepLab v3+, arXiv:1802.02611), Sec. 3.2 and Fig. 4, modify Chollet's Xception (CVPR 2017, arXiv:1610.02357):
a deeper middle flow, every max pool replaced by a strided depthwise separable conv, and "extra batch normalization
and ReLU activation are added after each 3x3 depthwise convolution". The TF reference code
(``tensorflow/models`` ``research/deeplab/core/xception.py``: ``activation_fn_in_separable_conv=True`` only for
``exit_flow/block2`` in ``xception_41`` / ``xception_65_factory`` / ``xception_71_factory``; timm's ``xception65``
matches it) has that ReLU in the last exit-flow block only: 3 of the 63 separable convs of Xception-65.
``dw_act=True`` adds it after every depthwise conv, as the paper's text says.

Defaults taken from the reference code and papers rather than from timm:

* BatchNorm epsilon 1e-3 and decay 0.9997, i.e. PyTorch ``momentum`` = 1 - 0.9997 = 3e-4 (timm's xception models
  use momentum 0.1). These come from the authors' TF code (``research/deeplab/core/xception.py``,
  ``xception_arg_scope(batch_norm_decay=0.9997, batch_norm_epsilon=0.001)``), not from a section of the paper;
* dropout 0.5 before the classifier (Xception, Sec. 4.3, regularization configuration: "a dropout layer of
  rate 0.5 before the logistic regression layer"; the TF code's ``xception(keep_prob=0.5)``);
* 299 x 299 input (Xception, Fig. 5; DeepLab v3+, Sec. 4.3, ImageNet pretraining).

Block layouts (timm / TF DeepLab ``xception_41/65/71``): entry flow, a middle flow of 8 (41) or 16 (65, 71) blocks
of 728 channels, and the two exit-flow blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch.nn as nn
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import LayerType, get_act_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.xception_aligned import SeparableConv2d, XceptionAligned

__all__ = ['XceptionTricks', 'xception_block_cfg', 'DEEPLAB_BN_EPS', 'DEEPLAB_BN_MOMENTUM']

DEEPLAB_BN_EPS = 1e-3
"""BatchNorm epsilon of the DeepLab TF code (``research/deeplab/core/xception.py``, ``xception_arg_scope``)."""
DEEPLAB_BN_MOMENTUM = 3e-4
"""PyTorch BN momentum for the DeepLab TF code's decay 0.9997 (``xception_arg_scope``): momentum = 1 - decay."""
XCEPTION_DROP_RATE = 0.5
"""Dropout before the classifier (Xception, arXiv:1610.02357, Sec. 4.3, regularization configuration)."""

_MIDDLE_CHS = 728


def xception_block_cfg(entry: Sequence[tuple[int, int, int]], num_middle: int) -> list[dict[str, Any]]:
    """Block configs of an aligned Xception for timm's ``XceptionAligned``.

    Args:
        entry: Entry-flow blocks as ``(in_chs, out_chs, stride)``; the last must output 728 channels.
        num_middle: Number of 728 -> 728 middle-flow blocks.

    Returns:
        Fresh dicts (``XceptionAligned`` edits them in place): entry flow, middle flow, then the two exit-flow
        blocks, 728 -> (728, 1024, 1024) with stride 2, and 1024 -> (1536, 1536, 2048) without a skip, whose
        separable convs are each followed by BN + ReLU.
    """
    cfg = [dict(in_chs=i, out_chs=o, stride=s) for i, o, s in entry]
    cfg += [dict(in_chs=_MIDDLE_CHS, out_chs=_MIDDLE_CHS, stride=1) for _ in range(num_middle)]
    cfg += [
        dict(in_chs=_MIDDLE_CHS, out_chs=(728, 1024, 1024), stride=2),
        dict(in_chs=1024, out_chs=(1536, 1536, 2048), stride=1, no_skip=True, start_with_relu=False),
    ]
    return cfg


_ENTRY_41_65 = ((64, 128, 2), (128, 256, 2), (256, 728, 2))
_ENTRY_71 = ((64, 128, 2), (128, 256, 1), (256, 256, 2), (256, 728, 1), (728, 728, 2))


class XceptionTricks(XceptionAligned):
    """timm ``XceptionAligned`` with DeepLab v3+ BN defaults, dropout 0.5 and the optional depthwise BN + ReLU.

    Accepts every keyword of ``XceptionAligned``.
    """

    def __init__(
            self,
            block_cfg: Sequence[dict[str, Any]],
            *,
            bn_eps: float | None = None,
            bn_momentum: float | None = None,
            dw_act: bool = False,
            norm_layer: LayerType | None = None,
            act_layer: LayerType = nn.ReLU,
            drop_rate: float = XCEPTION_DROP_RATE,
            **kwargs: Any,
    ) -> None:
        """Build the network.

        Args:
            block_cfg: Block configs (see ``xception_block_cfg``); copied, not modified.
            bn_eps: BatchNorm epsilon; default 1e-3 (DeepLab TF code).
            bn_momentum: BatchNorm momentum (PyTorch convention); default 3e-4 (TF code's decay 0.9997).
            dw_act: Add the activation after every depthwise conv's BN (DeepLab v3+ text, Sec. 3.2), not only in
                the last exit-flow block (TF code, timm).
            norm_layer: Norm layer; exclusive with ``bn_eps`` / ``bn_momentum``.
            act_layer: Activation class or timm name (default ReLU).
            drop_rate: Dropout before the classifier; default 0.5 (Xception).
            **kwargs: Other ``XceptionAligned`` keywords (``num_classes``, ``output_stride``, ...).

        Raises:
            ValueError: If ``norm_layer`` is given together with ``bn_eps`` / ``bn_momentum``, or ``dw_act`` is
                combined with the pre-activation layout.
        """
        if norm_layer is not None and (bn_eps is not None or bn_momentum is not None):
            raise ValueError('Pass either norm_layer or bn_eps / bn_momentum, not both')
        if dw_act and kwargs.get('preact', False):
            raise ValueError('dw_act=True needs preact=False (pre-activation separable convs have no act_dw)')
        output_stride = kwargs.get('output_stride', 32)
        if output_stride not in (8, 16, 32):
            raise ValueError(f'Unsupported output_stride={output_stride!r}; valid choices: 8, 16, 32')
        if norm_layer is None:
            norm_layer = partial(
                nn.BatchNorm2d,
                eps=DEEPLAB_BN_EPS if bn_eps is None else bn_eps,
                momentum=DEEPLAB_BN_MOMENTUM if bn_momentum is None else bn_momentum,
            )
        act_layer = get_act_layer(act_layer)
        super().__init__(
            block_cfg=[dict(b) for b in block_cfg],
            norm_layer=norm_layer,
            act_layer=act_layer,
            drop_rate=drop_rate,
            **kwargs,
        )
        self.dw_act = dw_act
        if dw_act:
            for m in self.modules():
                if isinstance(m, SeparableConv2d) and isinstance(m.act_dw, nn.Identity):
                    m.act_dw = act_layer(inplace=True)


def _create_xception_tricks(variant: str, pretrained: bool = False, **kwargs: Any) -> XceptionTricks:
    return build_model_with_cfg(
        XceptionTricks, variant, pretrained,
        feature_cfg=dict(flatten_sequential=True, feature_cls='hook'),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """As timm's xception cfgs: 299 input, Inception mean / std, crop 0.903, bicubic."""
    return {
        'url': '',
        'num_classes': 1000, 'input_size': (3, 299, 299), 'pool_size': (10, 10),
        'crop_pct': 0.903, 'interpolation': 'bicubic',
        'mean': IMAGENET_INCEPTION_MEAN, 'std': IMAGENET_INCEPTION_STD,
        'first_conv': 'stem.0.conv', 'classifier': 'head.fc',
        'paper_ids': ('arXiv:1802.02611', 'arXiv:1610.02357'),
        'paper_name': 'Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation',
        'origin_url': 'https://github.com/tensorflow/models/tree/master/research/deeplab',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'xception41_tricks': _cfg(),
    'xception65_tricks': _cfg(),
    'xception71_tricks': _cfg(),
})


@register_model
def xception41_tricks(pretrained: bool = False, **kwargs: Any) -> XceptionTricks:
    """Aligned Xception-41: three strided entry blocks, 8 middle-flow blocks, two exit blocks."""
    model_args = dict(block_cfg=xception_block_cfg(_ENTRY_41_65, num_middle=8))
    return _create_xception_tricks('xception41_tricks', pretrained, **dict(model_args, **kwargs))


@register_model
def xception65_tricks(pretrained: bool = False, **kwargs: Any) -> XceptionTricks:
    """Aligned Xception-65 of DeepLab v3+ (arXiv:1802.02611, Sec. 3.2): 16 middle-flow blocks."""
    model_args = dict(block_cfg=xception_block_cfg(_ENTRY_41_65, num_middle=16))
    return _create_xception_tricks('xception65_tricks', pretrained, **dict(model_args, **kwargs))


@register_model
def xception71_tricks(pretrained: bool = False, **kwargs: Any) -> XceptionTricks:
    """Aligned Xception-71: five entry blocks (strides 2, 1, 2, 1, 2), 16 middle-flow blocks."""
    model_args = dict(block_cfg=xception_block_cfg(_ENTRY_71, num_middle=16))
    return _create_xception_tricks('xception71_tricks', pretrained, **dict(model_args, **kwargs))
