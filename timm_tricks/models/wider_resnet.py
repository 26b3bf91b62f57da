"""Wider ResNet "Model A" (ResNet-38 and its 16/20-layer siblings) as a timm model.

Wu, Shen and van den Hengel, "Wider or Deeper: Revisiting the ResNet Model for Visual Recognition",
Pattern Recognition 2019 (arXiv:1611.10080). The authors' code release (``itijyou/ademxapp``, README.md, "Results on
the ILSVRC 2012 val set tested with a single scale (320, without flipping)") gives Model A 19.20% top-1 error.
The layout follows Mapillary's inplace_abn ``scripts/models/wider_resnet.py`` and ``scripts/modules/residual.py``
(``IdentityResidualBlock``), whose ImageNet recipe reports 79.72 top-1 at 224 for ``wider_resnet38`` (README.md,
"Training on ImageNet-1k" table):

* stem: one 3x3 conv, 3 -> 64, stride 1, with no norm or activation after it (the first block's pre-activation
  normalises its output);
* six stages of pre-activation blocks, ``[1, 1, 1, 1, 1, 1]`` (16 layers), ``[1, 1, 1, 3, 1, 1]`` (20) or
  ``[3, 3, 6, 3, 1, 1]`` (38) blocks, with widths (128, 128), (256, 256), (512, 512), (512, 1024),
  (512, 1024, 2048), (1024, 2048, 4096); three widths make a 1x1-3x3-1x1 bottleneck;
* ``WiderResNet``: a 3x3 / 2 max pool (padding 1) before each of the first five stages;
* ``WiderResNetA2`` (here the same class, other arguments): max pools before the first two stages only, stride 2
  in the first block of stages 3, 4 and 5 (1-based), ``Dropout2d`` 0.3 in every block of stage 5 and 0.5 in stage 6,
  and dilation instead of stride for output stride 8 or 16;
* head: BN-act on the 4096 final channels, global average pool, linear.

Normalisation is InPlace-ABN in the reference: BatchNorm (eps 1e-5, momentum 0.1) + leaky ReLU with slope 0.01.
We use timm's ``BatchNormAct2d`` (not in-place, and compatible with ``timm.layers.convert_sync_batchnorm``).

Module names follow timm (``stem``, ``stages.N.pool``, ``stages.N.blocks.M``, ``norm``, ``head.fc``); inside a block
they follow the reference (``bn1``, ``proj_conv``, ``convs.conv1`` ...).
"""

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, LayerType, get_act_layer, get_norm_act_layer
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

__all__ = ['IdentityResidualBlock', 'WiderResNet', 'stage_plan', 'WIDER_RESNET_INITS', 'WIDER_RESNET_WIDTHS']

WIDER_RESNET_WIDTHS: tuple[tuple[int, ...], ...] = (
    (128, 128), (256, 256), (512, 512), (512, 1024), (512, 1024, 2048), (1024, 2048, 4096))
"""Per-stage widths of Model A (inplace_abn ``models/wider_resnet.py``; arXiv:1611.10080, Fig. 3)."""

INPLACE_ABN_SLOPE = 0.01
"""InPlace-ABN's default leaky ReLU slope (``activation_param``)."""

WIDER_RESNET_INITS: tuple[str, ...] = ('kaiming', 'xavier')
"""Valid values of ``WiderResNet(init=...)``."""

INPLACE_ABN_CLASSIFIER_GAIN = 0.1
"""Gain of the classifier's Xavier-uniform init in inplace_abn's ``scripts/train_imagenet.py`` (``init_weights``)."""

_OUTPUT_STRIDES = (8, 16, 32)
_NUM_TAPS = 8  # feature_info: the stem, six stages and the final BN-act


def stage_plan(
        pool_stages: Sequence[bool],
        strided_stages: Sequence[bool],
        output_stride: int = 32,
) -> list[dict[str, int | bool]]:
    """Resolve per-stage pooling, stride and dilation for a target output stride.

    The stem has stride 1. A max pool halves the resolution before its stage. A strided stage halves it in its
    first block, unless the running reduction has already reached ``output_stride``: then its stride becomes
    dilation, and the dilations multiply (as in inplace_abn's ``WiderResNetA2(dilation=True)``, which equals
    ``output_stride=8`` here). Max pools cannot become dilation.

    Args:
        pool_stages: Per stage, whether a 3x3 / 2 max pool precedes it.
        strided_stages: Per stage, whether its first block has stride 2.
        output_stride: Target reduction of the final feature map: 8, 16 or 32.

    Returns:
        One dict per stage with ``pool`` (bool), ``stride``, ``dilation`` and ``reduction`` (after the stage).

    Raises:
        ValueError: If ``output_stride`` is not one of 8, 16, 32, or this layout cannot reach it.
    """
    def _plan(os_: int) -> list[dict[str, int | bool]] | None:
        plan: list[dict[str, int | bool]] = []
        reduction, dilation = 1, 1
        for pool, strided in zip(pool_stages, strided_stages, strict=True):
            if pool:
                if reduction >= os_:
                    return None
                reduction *= 2
            stride = 2 if strided else 1
            if strided and reduction >= os_:
                dilation *= 2
                stride = 1
            elif strided:
                reduction *= 2
            plan.append(dict(pool=bool(pool), stride=stride, dilation=dilation, reduction=reduction))
        return plan if reduction == os_ else None

    valid = [os_ for os_ in _OUTPUT_STRIDES if _plan(os_) is not None]
    plan = _plan(output_stride) if output_stride in _OUTPUT_STRIDES else None
    if plan is None:
        raise ValueError(
            f'Unsupported output_stride={output_stride!r} for this layout (max pools cannot be dilated); '
            f'valid choices: {", ".join(map(str, valid))}')
    return plan


class IdentityResidualBlock(nn.Module):
    """Pre-activation ("identity mapping") residual block of inplace_abn ``modules/residual.py``.

    ``bn1`` (BN-act) normalises the input. The shortcut is a 1x1 conv (with the block's stride) of that
    normalised input when the stride or width changes, else the raw input. The residual path, on the normalised
    input, is ``conv3x3(stride, dilation) -> BN-act -> [dropout] -> conv3x3(dilation)`` for two widths, or
    ``conv1x1(stride) -> BN-act -> conv3x3(dilation) -> BN-act -> [dropout] -> conv1x1`` for three.
    """

    def __init__(
            self,
            in_chs: int,
            widths: Sequence[int],
            stride: int = 1,
            dilation: int = 1,
            drop_prob: float = 0.0,
            norm_act_layer: Any = None,
            device: Any = None,
            dtype: Any = None,
    ) -> None:
        """Build the block.

        Args:
            in_chs: Input channels.
            widths: Two widths (basic block) or three (bottleneck); the last is the output width.
            stride: Stride of the first conv of the residual path and of the projection shortcut.
            dilation: Dilation (and padding) of the 3x3 convs.
            drop_prob: ``Dropout2d`` probability before the last conv; 0 for none.
            norm_act_layer: Norm + activation class (default: timm ``BatchNormAct2d`` with leaky ReLU 0.01).
            device: Parameter device.
            dtype: Parameter dtype.

        Raises:
            ValueError: If ``widths`` does not hold two or three values.
        """
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        widths = tuple(widths)
        if len(widths) not in (2, 3):
            raise ValueError(f'widths must hold two or three values, got {widths!r}')
        norm_act_layer = norm_act_layer or _default_norm_act()
        out_chs = widths[-1]
        self.in_chs, self.out_chs, self.stride, self.dilation = in_chs, out_chs, stride, dilation

        self.bn1 = norm_act_layer(in_chs, **dd)
        layers: list[tuple[str, nn.Module]] = []
        if len(widths) == 2:
            layers += [
                ('conv1', nn.Conv2d(in_chs, widths[0], 3, stride, padding=dilation, dilation=dilation, bias=False,
                                    **dd)),
                ('bn2', norm_act_layer(widths[0], **dd)),
            ]
        else:
            layers += [
                ('conv1', nn.Conv2d(in_chs, widths[0], 1, stride, bias=False, **dd)),
                ('bn2', norm_act_layer(widths[0], **dd)),
                ('conv2', nn.Conv2d(widths[0], widths[1], 3, 1, padding=dilation, dilation=dilation, bias=False,
                                    **dd)),
                ('bn3', norm_act_layer(widths[1], **dd)),
            ]
        if drop_prob > 0:
            layers.append(('dropout', nn.Dropout2d(p=drop_prob)))
        last = f'conv{len(widths)}'
        if len(widths) == 2:
            layers.append((last, nn.Conv2d(widths[0], out_chs, 3, 1, padding=dilation, dilation=dilation, bias=False,
                                           **dd)))
        else:
            layers.append((last, nn.Conv2d(widths[1], out_chs, 1, bias=False, **dd)))
        self.convs = nn.Sequential(OrderedDict(layers))
        self.proj_conv = (
            nn.Conv2d(in_chs, out_chs, 1, stride, bias=False, **dd) if stride != 1 or in_chs != out_chs else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``convs(bn1(x)) + shortcut``."""
        xn = self.bn1(x)
        shortcut = self.proj_conv(xn) if self.proj_conv is not None else x
        return self.convs(xn) + shortcut


def _xavier_gain(act_layer: Any, act_kwargs: dict[str, Any]) -> float:
    """The Xavier gain inplace_abn's ``init_weights`` uses for an activation: leaky ReLU's for its slope, ReLU's for
    ReLU and ELU, 1 for anything else."""
    if isinstance(act_layer, type) and issubclass(act_layer, nn.LeakyReLU):
        return nn.init.calculate_gain('leaky_relu', act_kwargs.get('negative_slope', INPLACE_ABN_SLOPE))
    if isinstance(act_layer, type) and issubclass(act_layer, (nn.ReLU, nn.ELU)):
        return nn.init.calculate_gain('relu')
    return 1.0


def _default_norm_act() -> Any:
    return get_norm_act_layer('batchnorm2d', act_layer=nn.LeakyReLU)


class WiderResNet(nn.Module):
    """Wider ResNet (arXiv:1611.10080, Model A family) with timm's model interface.

    ``pool_stages`` / ``strided_stages`` / ``drop_probs`` choose between inplace_abn's ``WiderResNet`` (max pools
    before the first five stages) and ``WiderResNetA2`` (pools before the first two, strided first blocks in the
    next three, dropout in the last two).

    Weight init, ``init``:

    * ``'xavier'``: inplace_abn's ImageNet training (``scripts/train_imagenet.py``, ``init_weights``, with the
      defaults of ``scripts/imagenet/config.py``: ``weight_init`` ``xavier_normal``, ``weight_gain_multiplier`` 1):
      every conv ``xavier_normal_(w, gain)`` with the gain of the activation (``calculate_gain('leaky_relu', slope)``
      for leaky ReLU, ``calculate_gain('relu')`` for ReLU and ELU, 1 otherwise), i.e. std =
      gain * sqrt(2 / (fan_in + fan_out)); the classifier ``xavier_uniform_(w, 0.1)``, i.e. U[-a, a] with
      a = 0.1 * sqrt(6 / (fan_in + fan_out)); biases 0; BN gamma 1, beta 0.
    * ``'kaiming'`` (default, this project's choice): Kaiming normal, fan-out, for convs; BN gamma 1, beta 0; PyTorch's
      default for the classifier.
    """

    def __init__(
            self,
            layers: Sequence[int],
            pool_stages: Sequence[bool] = (True, True, True, True, True, False),
            strided_stages: Sequence[bool] = (False,) * 6,
            drop_probs: Sequence[float] = (0.0,) * 6,
            widths: Sequence[Sequence[int]] = WIDER_RESNET_WIDTHS,
            stem_width: int = 64,
            num_classes: int = 1000,
            in_chans: int = 3,
            output_stride: int = 32,
            global_pool: str = 'avg',
            drop_rate: float = 0.0,
            norm_layer: LayerType = 'batchnorm2d',
            act_layer: LayerType = 'leaky_relu',
            act_kwargs: dict[str, Any] | None = None,
            init: str = 'kaiming',
            device: Any = None,
            dtype: Any = None,
    ) -> None:
        """Build the network.

        Args:
            layers: Blocks per stage (six values).
            pool_stages: Per stage, whether a 3x3 / 2 max pool (padding 1) precedes it.
            strided_stages: Per stage, whether its first block has stride 2.
            drop_probs: Per stage, ``Dropout2d`` probability before the last conv of each block.
            widths: Per stage, the block widths (two or three values).
            stem_width: Output channels of the 3x3 stem conv.
            num_classes: Classifier outputs; 0 for none (``forward`` then returns pooled features).
            in_chans: Input channels.
            output_stride: 8, 16 or 32; see ``stage_plan`` (only layouts with strided stages go below 32).
            global_pool: timm pool type of the head.
            drop_rate: Dropout before the classifier.
            norm_layer: Norm layer, turned into timm's norm + act version (default ``BatchNormAct2d``, eps 1e-5,
                momentum 0.1 as the reference).
            act_layer: Activation (default leaky ReLU).
            act_kwargs: Activation kwargs; default ``negative_slope=0.01`` for leaky ReLU (InPlace-ABN's default).
            init: Weight init, one of ``WIDER_RESNET_INITS``: ``'xavier'`` (inplace_abn's ImageNet training) or
                ``'kaiming'`` (see the class docstring).
            device: Parameter device.
            dtype: Parameter dtype.

        Raises:
            ValueError: For per-stage arguments of the wrong length, an unsupported ``output_stride`` or an unknown
                ``init``.
        """
        super().__init__()
        if init not in WIDER_RESNET_INITS:
            raise ValueError(f'Unknown init scheme {init!r}; valid choices: {", ".join(WIDER_RESNET_INITS)}')
        dd = dict(device=device, dtype=dtype)
        per_stage = dict(layers=layers, pool_stages=pool_stages, strided_stages=strided_stages,
                         drop_probs=drop_probs, widths=widths)
        for name, value in per_stage.items():
            if len(value) != 6:
                raise ValueError(f'{name} must have one value per stage (6), got {tuple(value)!r}')
        plan = stage_plan(pool_stages, strided_stages, output_stride)

        act_layer = get_act_layer(act_layer)
        if act_kwargs is None and act_layer is nn.LeakyReLU:
            act_kwargs = dict(negative_slope=INPLACE_ABN_SLOPE)
        norm_act_layer = get_norm_act_layer(norm_layer, act_layer=act_layer)
        if act_kwargs:
            norm_act_layer = partial(norm_act_layer, act_kwargs=dict(act_kwargs))
        self.init_scheme = init
        self.init_gain = _xavier_gain(act_layer, act_kwargs or {})

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.output_stride = output_stride
        self.grad_checkpointing = False

        self.stem = nn.Conv2d(in_chans, stem_width, 3, stride=1, padding=1, bias=False, **dd)
        self.feature_info = [dict(num_chs=stem_width, reduction=1, module='stem')]

        in_chs = stem_width
        stages = []
        stage_args = zip(layers, widths, drop_probs, plan, strict=True)
        for idx, (num_blocks, stage_widths, drop_prob, p) in enumerate(stage_args):
            blocks = []
            for block_idx in range(num_blocks):
                blocks.append(IdentityResidualBlock(
                    in_chs, stage_widths,
                    stride=p['stride'] if block_idx == 0 else 1,
                    dilation=p['dilation'],
                    drop_prob=drop_prob,
                    norm_act_layer=norm_act_layer,
                    **dd,
                ))
                in_chs = stage_widths[-1]
            stage = OrderedDict()
            if p['pool']:
                stage['pool'] = nn.MaxPool2d(3, stride=2, padding=1)
            stage['blocks'] = nn.Sequential(*blocks)
            stages.append(nn.Sequential(stage))
            self.feature_info.append(dict(num_chs=in_chs, reduction=p['reduction'], module=f'stages.{idx}'))
        self.stages = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = in_chs
        self.norm = norm_act_layer(in_chs, **dd)
        self.feature_info.append(dict(num_chs=in_chs, reduction=plan[-1]['reduction'], module='norm'))
        self.head = ClassifierHead(in_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)

        self.init_weights()

    @torch.jit.ignore
    def init_weights(self) -> None:
        """Initialise the weights by ``self.init_scheme`` (see the class docstring); norm layers gamma 1, beta 0."""
        xavier = self.init_scheme == 'xavier'
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if xavier:
                    nn.init.xavier_normal_(m.weight, self.init_gain)
                else:
                    nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear) and xavier:
                nn.init.xavier_uniform_(m.weight, INPLACE_ABN_CLASSIFIER_GAIN)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise lr decay (timm convention)."""
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint each block during training to save memory."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """Return the final linear layer."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier; ``num_classes=0`` removes it.

        Args:
            num_classes: New number of outputs.
            global_pool: New pool type; unchanged if None.
        """
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward_features`` that also returns the taps of ``feature_info`` (timm's feature API).

        The taps are the stem, the six stages and the final BN-act (``norm``), eight in all.

        Args:
            x: Input images.
            indices: Taps to return, as indices into ``feature_info``: the last n if an int, all if None.
            norm: Accepted for timm's interface; the final BN-act is a tap of its own (the last one).
            stop_early: Stop after the last requested tap (the returned features are then that tap's output).
            output_fmt: Only ``'NCHW'``.
            intermediates_only: Return only the taps.

        Returns:
            The list of taps, or ``(features, taps)`` with the features of ``forward_features``.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f'Unsupported output_fmt={output_fmt!r}; valid choices: NCHW')
        norm_index = _NUM_TAPS - 1
        take_indices, max_index = feature_take_indices(_NUM_TAPS, indices)
        intermediates = []
        x = self.stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        stages = self.stages[:max_index] if stop_early else self.stages
        for idx, stage in enumerate(stages, start=1):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                if hasattr(stage, 'pool'):
                    x = stage.pool(x)
                x = checkpoint_seq(stage.blocks, x)
            else:
                x = stage(x)
            if idx in take_indices:
                intermediates.append(x)
        if stop_early and max_index < norm_index:
            return intermediates if intermediates_only else (x, intermediates)
        x = self.norm(x)
        if norm_index in take_indices:
            intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages (and the final BN-act) after the last tap in ``indices`` (timm's feature API).

        Args:
            indices: Taps to keep, as in ``forward_intermediates``.
            prune_norm: Accepted for timm's interface: the final BN-act is a tap, kept exactly when it is asked for.
            prune_head: Remove the pool and classifier (always done when stages are dropped).

        Returns:
            The absolute indices of the kept taps.
        """
        norm_index = _NUM_TAPS - 1
        take_indices, max_index = feature_take_indices(_NUM_TAPS, indices)
        if max_index < norm_index:
            # the features now end at the last kept tap; the head was sized for the final BN-act
            self.stages = self.stages[:max_index]
            self.norm = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or max_index < norm_index:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, stages and the final BN-act: the unpooled features."""
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            for stage in self.stages:
                if hasattr(stage, 'pool'):
                    x = stage.pool(x)
                x = checkpoint_seq(stage.blocks, x)
        else:
            x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global pool, dropout and the linear classifier (or the pooled features if ``pre_logits``)."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.forward_head(self.forward_features(x))


def _create_wider_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> WiderResNet:
    # stem, six stages and the final norm: return all eight taps unless out_indices says otherwise
    return build_model_with_cfg(
        WiderResNet, variant, pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=tuple(range(8))),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        'url': '',
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem', 'classifier': 'head.fc',
        'paper_ids': 'arXiv:1611.10080',
        'paper_name': 'Wider or Deeper: Revisiting the ResNet Model for Visual Recognition',
        'origin_url': 'https://github.com/mapillary/inplace_abn',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'wider_resnet16_tricks': _cfg(),
    'wider_resnet20_tricks': _cfg(),
    'wider_resnet38_tricks': _cfg(notes=(
        'Model A of arXiv:1611.10080: 19.20% top-1 error at a single test scale of 320 (itijyou/ademxapp README.md)',
        'inplace_abn wider_resnet38: 79.72 top-1 at 224 (mapillary/inplace_abn README.md)',
    )),
    'wider_resnet38_a2_tricks': _cfg(),
})

_A2_LAYOUT = dict(
    pool_stages=(True, True, False, False, False, False),
    strided_stages=(False, False, True, True, True, False),
    drop_probs=(0.0, 0.0, 0.0, 0.0, 0.3, 0.5),
)


@register_model
def wider_resnet16_tricks(pretrained: bool = False, **kwargs: Any) -> WiderResNet:
    """Wider ResNet-16: one block per stage (inplace_abn ``net_wider_resnet16``)."""
    model_args = dict(layers=(1, 1, 1, 1, 1, 1))
    return _create_wider_resnet('wider_resnet16_tricks', pretrained, **dict(model_args, **kwargs))


@register_model
def wider_resnet20_tricks(pretrained: bool = False, **kwargs: Any) -> WiderResNet:
    """Wider ResNet-20: blocks (1, 1, 1, 3, 1, 1) (inplace_abn ``net_wider_resnet20``)."""
    model_args = dict(layers=(1, 1, 1, 3, 1, 1))
    return _create_wider_resnet('wider_resnet20_tricks', pretrained, **dict(model_args, **kwargs))


@register_model
def wider_resnet38_tricks(pretrained: bool = False, **kwargs: Any) -> WiderResNet:
    """Wider ResNet-38, Model A of arXiv:1611.10080: blocks (3, 3, 6, 3, 1, 1), max pools before stages 1-5."""
    model_args = dict(layers=(3, 3, 6, 3, 1, 1))
    return _create_wider_resnet('wider_resnet38_tricks', pretrained, **dict(model_args, **kwargs))


@register_model
def wider_resnet38_a2_tricks(pretrained: bool = False, **kwargs: Any) -> WiderResNet:
    """Wider ResNet-38 A2 (inplace_abn ``WiderResNetA2``): pools before stages 1-2, strided stages 3-5,
    ``Dropout2d`` 0.3 / 0.5 in stages 5 / 6; ``output_stride`` 8, 16 or 32 via dilation."""
    model_args = dict(layers=(3, 3, 6, 3, 1, 1), **_A2_LAYOUT)
    return _create_wider_resnet('wider_resnet38_a2_tricks', pretrained, **dict(model_args, **kwargs))
