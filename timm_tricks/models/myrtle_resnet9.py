"""Myrtle.ai's DAWNBench ResNet-9 for 32 x 32 images, and ghost batch norm.

David Page, "How to train your ResNet" (Myrtle.ai blog series, 2018-2019; code: davidcpage/cifar10-fast, whose
``bag_of_tricks.ipynb`` is post 8, "Bag of tricks"; "cell N" counts its cells from 0). The network (part 4 of the
series onwards):

* ``prep``: conv 3 -> 64;
* ``layer1``: conv 64 -> 128, max pool 2, then a residual of two 128-channel conv-BN-act layers;
* ``layer2``: conv 128 -> 256, max pool 2;
* ``layer3``: conv 256 -> 512, max pool 2, then a residual as in ``layer1``;
* global max pool, a linear layer 512 -> classes without bias, and the logits multiplied by 0.125.

Every conv is 3x3, padding 1, no bias, followed by BN and the activation; a residual computes
``x + res2(res1(x))``. The defaults are the final network of post 8 (cells 72 and 85):

* pooling layers run conv -> max pool -> BN -> act (post 8, "Moving max-pool layers", cell 38; posts 4-7 and cell
  26 pool last, conv -> BN -> act -> pool: ``pool_order='conv_bn_act_pool'``; cell 35's intermediate order
  conv -> BN -> pool -> act, the same function for a monotonic activation, is ``'conv_bn_pool_act'``);
* ``prep`` is a fixed 3x3 patch-whitening conv with 27 outputs (:class:`timm_tricks.whitening.PatchWhitening`,
  fitted to training images with :meth:`MyrtleResNet9.fit_whitening`), then a 1x1 conv 27 -> 64, BN and the
  activation (post 8, "Input patch whitening", cell 72; ``whitening=False`` gives the 3x3 conv 3 -> 64 of posts
  4-7). Both preps have 3 x 3 x 3 x 64 = 27 x 64 = 1,728 weights, so the parameter count is unchanged; the fixed
  27 x 3 x 3 x 3 whitening filter is a buffer (cell 72: a conv weight with ``requires_grad = False``).

The final recipe of the series (94.1% in 26 s on a V100 with flip TTA, cell 84) also swaps ReLU for CELU (alpha
0.075 with learnable BN scales, 0.3 with BN scales frozen at 1) and plain BN for ghost BN over splits of 32 images;
the options below switch those on (``timm_tricks/recipes/myrtle_resnet9.yaml`` does). Weight init is PyTorch's
default, as in cifar10-fast; BN gamma starts at ``bn_weight_init`` and beta at 0.
"""

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d, register_notrace_module
from timm.models import build_model_with_cfg, checkpoint, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ..whitening import REFERENCE_EPS, PatchWhitening

__all__ = ['GhostBatchNorm2d', 'MyrtleResNet9', 'ghost_batch_norm', 'ACTIVATIONS', 'POOL_ORDERS']

ACTIVATIONS: tuple[str, ...] = ('relu', 'celu')
"""Valid values of the ``act`` argument."""

POOL_ORDERS: tuple[str, ...] = ('conv_pool_bn_act', 'conv_bn_pool_act', 'conv_bn_act_pool')
"""Valid values of ``pool_order``: where the max pool of ``layer1``-``layer3`` sits (post 8 cells 38, 35 and 26)."""

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_LAYERS = ('layer1', 'layer2', 'layer3')


def ghost_batch_norm(
        x: torch.Tensor,
        num_splits: int,
        running_mean: torch.Tensor | None = None,
        running_var: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        momentum: float = 0.1,
        eps: float = 1e-5,
) -> torch.Tensor:
    """Ghost batch norm in training mode (Hoffer et al. 2017, arXiv:1705.08741; used by Myrtle.ai's ResNet-9).

    The batch is cut into ``num_splits`` contiguous groups (``x.chunk(num_splits)``) and each group is normalised
    with its own mean and biased variance. If running buffers are given they are updated in place with the mean
    over the groups of each group's statistics: ``r <- (1 - momentum) r + momentum * mean_g(stat_g)``, the variance
    unbiased per group as in ``nn.BatchNorm2d``. cifar10-fast keeps one buffer per group and averages them when it
    switches to eval; the update is linear, so the result is the same. (cifar10-fast groups samples by
    ``view(-1, C * splits, H, W)``, i.e. sample ``i`` in group ``i mod splits``; for a shuffled batch either
    partition is a random one.) Statistics are computed in float32.

    Args:
        x: Input of shape (N, C, H, W); N must be divisible by ``num_splits``.
        num_splits: Number of groups (>= 1); 1 is plain training-mode batch norm.
        running_mean: Optional running mean of shape (C,), updated in place.
        running_var: Optional running variance of shape (C,), updated in place.
        weight: Optional per-channel scale (gamma).
        bias: Optional per-channel shift (beta).
        momentum: Running-stat update factor.
        eps: Added to the variance.

    Returns:
        The normalised tensor, same shape and dtype as ``x``.

    Raises:
        ValueError: For a non-4D input, ``num_splits < 1``, or a batch size not divisible by ``num_splits``.
    """
    if x.dim() != 4:
        raise ValueError(f'ghost_batch_norm expects a 4D (N, C, H, W) input, got shape {list(x.shape)}')
    if num_splits < 1:
        raise ValueError(f'num_splits must be >= 1, got {num_splits}')
    n, c, h, w = x.shape
    if n % num_splits:
        raise ValueError(
            f'Ghost batch norm: batch size {n} is not divisible by num_splits={num_splits}; '
            f'use a batch size that is a multiple of {num_splits} (e.g. drop_last=True in the data loader)')
    group = n // num_splits
    xs = x.reshape(num_splits, group, c, h, w)
    xs32 = xs.float()
    var, mean = torch.var_mean(xs32, dim=(1, 3, 4), correction=0, keepdim=True)  # (splits, 1, C, 1, 1)
    y = (xs32 - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.float().view(1, 1, c, 1, 1)
    if bias is not None:
        y = y + bias.float().view(1, 1, c, 1, 1)
    if running_mean is not None or running_var is not None:
        count = group * h * w
        with torch.no_grad():
            if running_mean is not None:
                running_mean.lerp_(mean.mean(dim=0).flatten().to(running_mean.dtype), momentum)
            if running_var is not None:
                unbiased = var * (count / (count - 1)) if count > 1 else var
                running_var.lerp_(unbiased.mean(dim=0).flatten().to(running_var.dtype), momentum)
    return y.reshape(n, c, h, w).to(x.dtype)


@register_notrace_module  # data-dependent checks: a leaf for timm's FX feature extraction
class GhostBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that normalises ``num_splits`` groups of the batch separately in training.

    Evaluation uses the running statistics, exactly like ``nn.BatchNorm2d``; ``num_splits=1`` is plain BN.
    Parameters and buffers are those of ``nn.BatchNorm2d`` (so checkpoints interchange). Note that
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` turns it into plain synchronised BN.
    """

    def __init__(
            self,
            num_features: int,
            num_splits: int = 1,
            eps: float = 1e-5,
            momentum: float | None = 0.1,
            affine: bool = True,
            track_running_stats: bool = True,
            device: Any = None,
            dtype: Any = None,
    ) -> None:
        """Build the layer.

        Args:
            num_features: Channels.
            num_splits: Groups per batch (>= 1).
            eps: Added to the variance.
            momentum: Running-stat update factor; None for a cumulative average (as ``nn.BatchNorm2d``).
            affine: Learnable gamma / beta.
            track_running_stats: Keep running statistics.
            device: Parameter device.
            dtype: Parameter dtype.

        Raises:
            ValueError: If ``num_splits < 1``.
        """
        if int(num_splits) != num_splits or num_splits < 1:
            raise ValueError(f'num_splits must be an integer >= 1, got {num_splits!r}')
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, device=device, dtype=dtype)
        self.num_splits = int(num_splits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Ghost BN in training (or without running stats), running-stat BN in eval."""
        if x.dim() != 4:
            raise ValueError(f'expected 4D input (got {x.dim()}D input)')
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        if use_batch_stats and x.shape[0] % self.num_splits:
            # checked here too so that a rejected batch leaves num_batches_tracked alone
            raise ValueError(
                f'Ghost batch norm: batch size {x.shape[0]} is not divisible by num_splits={self.num_splits}; '
                f'use a batch size that is a multiple of {self.num_splits} (e.g. drop_last=True in the data loader)')
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        if not use_batch_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        track = self.training and self.track_running_stats
        if self.num_splits == 1:  # plain batch norm, as nn.BatchNorm2d computes it
            return F.batch_norm(
                x, self.running_mean if track else None, self.running_var if track else None,
                self.weight, self.bias, True, factor, self.eps)
        return ghost_batch_norm(
            x, self.num_splits,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight, self.bias, momentum=factor, eps=self.eps)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, num_splits={self.num_splits}'


class ConvBnAct(nn.Module):
    """[whiten ->] conv (no bias) -> norm -> act, a 2x2 max pool where ``pool_order`` puts it, then [residual]:
    cifar10-fast's ``conv_bn`` / ``conv_pool_block`` (and ``whitening_block`` with ``whiten``)."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            norm_layer: Callable[[int], nn.Module],
            act_layer: Callable[[], nn.Module],
            pool: bool = False,
            residual: bool = False,
            pool_order: str = POOL_ORDERS[0],
            whiten: PatchWhitening | None = None,
    ) -> None:
        super().__init__()
        self.whiten = whiten
        if whiten is None:
            self.conv = nn.Conv2d(in_chs, out_chs, kernel_size=3, padding=1, bias=False)
        else:  # the whitened patches already span the 3x3 window: a 1x1 conv mixes them (cell 72)
            self.conv = nn.Conv2d(whiten.out_channels, out_chs, kernel_size=1, bias=False)
        self.bn = norm_layer(out_chs)
        self.act = act_layer()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.pool_at = POOL_ORDERS.index(pool_order)  # 0: before the norm, 1: before the act, 2: last
        self.residual = Residual(out_chs, norm_layer, act_layer) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.whiten is not None:
            x = self.whiten(x)
        x = self.conv(x)
        if self.pool_at == 0:
            x = self.pool(x)
        x = self.bn(x)
        if self.pool_at == 1:
            x = self.pool(x)
        x = self.act(x)
        if self.pool_at == 2:
            x = self.pool(x)
        if self.residual is not None:
            x = self.residual(x)
        return x


class Residual(nn.Module):
    """``x + res2(res1(x))`` with two conv-BN-act layers of constant width."""

    def __init__(self, chs: int, norm_layer: Callable[[int], nn.Module], act_layer: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.res1 = ConvBnAct(chs, chs, norm_layer, act_layer)
        self.res2 = ConvBnAct(chs, chs, norm_layer, act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res2(self.res1(x))


def _make_pool(pool_type: str) -> SelectAdaptivePool2d:
    """timm's global pool, flattened only when it pools: ``''`` keeps the NCHW map (as timm's classifiers do)."""
    return SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))


class MyrtleResNet9(nn.Module):
    """Myrtle.ai's ResNet-9 ("How to train your ResNet") with timm's model interface."""

    def __init__(
            self,
            num_classes: int = 10,
            in_chans: int = 3,
            channels: tuple[int, int, int, int] = (64, 128, 256, 512),
            output_scale: float = 0.125,
            act: str = 'relu',
            celu_alpha: float | None = None,
            ghost_bn_splits: int = 0,
            bn_weight_init: float = 1.0,
            bn_weight_frozen: bool = False,
            bn_eps: float = 1e-5,
            bn_momentum: float = 0.1,
            global_pool: str = 'max',
            drop_rate: float = 0.0,
            pool_order: str = 'conv_pool_bn_act',
            whitening: bool = True,
            whitening_eps: float = REFERENCE_EPS,
    ) -> None:
        """Build the network.

        Args:
            num_classes: Classifier outputs; 0 removes the classifier (``forward`` returns pooled features, or
                the unpooled map with ``global_pool=''``).
            in_chans: Input channels.
            channels: Widths of ``prep``, ``layer1``, ``layer2``, ``layer3`` (64, 128, 256, 512 in the reference).
            output_scale: Multiplies the logits (0.125 in the reference; the final recipe uses 1/16 with frozen
                BN scales).
            act: ``'relu'`` (the reference network) or ``'celu'`` (the final recipe).
            celu_alpha: CELU alpha; default 0.3 with ``bn_weight_frozen`` and 0.075 otherwise (the final recipe).
                Ignored for ReLU.
            ghost_bn_splits: 0 or 1 for plain ``nn.BatchNorm2d``; n > 1 for ``GhostBatchNorm2d`` with n groups
                (the final recipe uses groups of 32 images: 16 splits for batch 512).
            bn_weight_init: Initial BN gamma.
            bn_weight_frozen: Keep BN gamma fixed at ``bn_weight_init`` (``requires_grad=False``).
            bn_eps: BN epsilon.
            bn_momentum: BN running-stat momentum.
            global_pool: timm pool type before the classifier (``'max'`` in the reference).
            drop_rate: Dropout before the classifier (0 in the reference).
            pool_order: Where ``layer1``-``layer3`` max-pool: ``'conv_pool_bn_act'`` (post 8 from "Moving max-pool
                layers" on, cell 38), ``'conv_bn_pool_act'`` (cell 35) or ``'conv_bn_act_pool'`` (posts 4-7).
            whitening: ``prep`` is a fixed 3x3 patch-whitening conv, a 1x1 conv, BN and act (post 8, cell 72);
                False: a 3x3 conv, BN and act (posts 4-7). Fit the filter with :meth:`fit_whitening` before
                training (the trainer does); unfitted it is the identity on the patch pixels.
            whitening_eps: Added to the patch covariance's eigenvalues when fitting (1e-2 in cell 72).

        Raises:
            ValueError: For an unknown ``act`` or ``pool_order``, a negative ``ghost_bn_splits`` or a wrong number
                of ``channels``.
        """
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f'Unknown act {act!r}; valid choices: {", ".join(ACTIVATIONS)}')
        if int(ghost_bn_splits) != ghost_bn_splits or ghost_bn_splits < 0:
            raise ValueError(
                f'ghost_bn_splits must be 0 or 1 (plain BatchNorm2d) or an integer > 1, got {ghost_bn_splits!r}')
        if len(channels) != 4:
            raise ValueError(f'channels must hold 4 widths (prep, layer1, layer2, layer3), got {tuple(channels)!r}')
        if pool_order not in POOL_ORDERS:
            raise ValueError(f'Unknown pool_order {pool_order!r}; valid choices: {", ".join(POOL_ORDERS)}')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.output_scale = output_scale
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.ghost_bn_splits = int(ghost_bn_splits)
        self.pool_order = pool_order
        if act == 'celu':
            self.celu_alpha = celu_alpha if celu_alpha is not None else (0.3 if bn_weight_frozen else 0.075)
            alpha = self.celu_alpha

            def act_layer() -> nn.Module:
                return nn.CELU(alpha=alpha, inplace=True)
        else:
            self.celu_alpha = None

            def act_layer() -> nn.Module:
                return nn.ReLU(inplace=True)

        def norm_layer(num_features: int) -> nn.Module:
            if self.ghost_bn_splits > 1:
                bn = GhostBatchNorm2d(num_features, self.ghost_bn_splits, eps=bn_eps, momentum=bn_momentum)
            else:
                bn = nn.BatchNorm2d(num_features, eps=bn_eps, momentum=bn_momentum)
            nn.init.constant_(bn.weight, bn_weight_init)
            nn.init.zeros_(bn.bias)
            bn.weight.requires_grad_(not bn_weight_frozen)
            return bn

        c0, c1, c2, c3 = channels
        whiten = PatchWhitening(in_chans, eps=whitening_eps) if whitening else None
        self.prep = ConvBnAct(in_chans, c0, norm_layer, act_layer, whiten=whiten)
        self.layer1 = ConvBnAct(c0, c1, norm_layer, act_layer, pool=True, residual=True, pool_order=pool_order)
        self.layer2 = ConvBnAct(c1, c2, norm_layer, act_layer, pool=True, pool_order=pool_order)
        self.layer3 = ConvBnAct(c2, c3, norm_layer, act_layer, pool=True, residual=True, pool_order=pool_order)
        self.feature_info = [
            dict(num_chs=c0, reduction=1, module='prep'),
            dict(num_chs=c1, reduction=2, module='layer1'),
            dict(num_chs=c2, reduction=4, module='layer2'),
            dict(num_chs=c3, reduction=8, module='layer3'),
        ]
        self.num_features = self.head_hidden_size = c3
        self.global_pool = _make_pool(global_pool)
        self.fc = self._make_fc(num_classes)

    def _make_fc(self, num_classes: int) -> nn.Module:
        in_features = self.num_features * self.global_pool.feat_mult()
        return nn.Linear(in_features, num_classes, bias=False) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def fit_whitening(self, images: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """Fit the fixed input-whitening filter of ``prep`` to training images (post 8, cells 70 and 72).

        The filter's rows are the eigenvectors of the covariance of all 3x3 patches of ``images``, each divided by
        ``sqrt(eigenvalue + whitening_eps)`` (:func:`timm_tricks.whitening.whitening_filter`). The reference fits
        on the first 10,000 CIFAR-10 training images, unaugmented; :class:`timm_tricks.train.Trainer` does the same
        before its first step (:func:`timm_tricks.whitening.fit_input_whitening`) and a resumed run loads the
        filter from its checkpoint. The filter is a buffer: it is saved with the weights, and a copy of the model
        (an EMA) made before this call keeps the old one.

        Args:
            images: Float ``(N, C, H, W)`` images normalised as the model sees them in training, or an iterable of
                such batches (summed in order, for data sets that do not fit in memory).

        Raises:
            ValueError: If the model was built with ``whitening=False``, or for images of the wrong shape.
        """
        if self.prep.whiten is None:
            raise ValueError('fit_whitening: this ResNet-9 was built with whitening=False (no whitening layer)')
        self.prep.whiten.fit(images)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise lr decay (timm convention)."""
        return dict(stem=r'^prep', blocks=r'^layer(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint layer1-3 during training to save memory."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """Return the final linear layer."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (bias-free, as the reference); ``num_classes=0`` removes it.

        Args:
            num_classes: New number of outputs.
            global_pool: New pool type; unchanged if None.
        """
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = _make_pool(global_pool)
            self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        device = next(self.parameters()).device
        self.fc = self._make_fc(num_classes).to(device)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward_features`` that also returns the outputs of ``prep`` and layers 1-3 (timm's feature API).

        Args:
            x: Input images.
            indices: Taps to return, as indices into ``feature_info``: the last n if an int, all if None.
            norm: Accepted for timm's interface; there is no norm layer after the last tap.
            stop_early: Stop after the last requested tap (the returned features are then that tap's output).
            output_fmt: Only ``'NCHW'``.
            intermediates_only: Return only the taps.

        Returns:
            The list of taps, or ``(features, taps)`` with the features of ``forward_features``.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f'Unsupported output_fmt={output_fmt!r}; valid choices: NCHW')
        take_indices, max_index = feature_take_indices(len(_LAYERS) + 1, indices)
        intermediates = []
        x = self.prep(x)
        if 0 in take_indices:
            intermediates.append(x)
        layers = _LAYERS[:max_index] if stop_early else _LAYERS
        for idx, name in enumerate(layers, start=1):
            layer = getattr(self, name)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(layer, x)
            else:
                x = layer(x)
            if idx in take_indices:
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
        """Drop the layers after the last tap in ``indices`` (timm's feature API).

        Args:
            indices: Taps to keep, as in ``forward_intermediates``.
            prune_norm: Accepted for timm's interface (there is no final norm).
            prune_head: Remove the pool and classifier (always done when layers are dropped).

        Returns:
            The absolute indices of the kept taps.
        """
        take_indices, max_index = feature_take_indices(len(_LAYERS) + 1, indices)
        for name in _LAYERS[max_index:]:
            setattr(self, name, nn.Identity())
        if max_index < len(_LAYERS):
            # the features now end at the last kept tap; the classifier was sized for layer3
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or max_index < len(_LAYERS):
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``prep`` and layers 1-3: the unpooled 512-channel features."""
        x = self.prep(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq([self.layer1, self.layer2, self.layer3], x)
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global max pool, then the bias-free linear layer times ``output_scale`` (no scaling without a
        classifier or with ``pre_logits``)."""
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        if pre_logits or self.num_classes == 0:
            return x
        return self.fc(x) * self.output_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled logits."""
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        'url': '',
        'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (4, 4),
        'crop_pct': 1.0, 'interpolation': 'bilinear',
        'mean': CIFAR10_MEAN, 'std': CIFAR10_STD,
        'first_conv': 'prep.whiten', 'classifier': 'fc',
        'paper_name': 'How to train your ResNet (Myrtle.ai, D. Page)',
        'origin_url': 'https://github.com/davidcpage/cifar10-fast',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'resnet9_tricks': _cfg(notes=('94% CIFAR-10 test accuracy target (DAWNBench)',)),
})


@register_model
def resnet9_tricks(pretrained: bool = False, **kwargs: Any) -> MyrtleResNet9:
    """Myrtle.ai DAWNBench ResNet-9 for 32 x 32 inputs (10 classes by default): post 8's final network (patch
    whitening, pool before BN); ``whitening=False, pool_order='conv_bn_act_pool'`` is that of posts 4-7."""
    if not kwargs.get('whitening', True):  # the first conv is prep's 3x3 conv, not the whitening filter
        kwargs['pretrained_cfg_overlay'] = {**(kwargs.get('pretrained_cfg_overlay') or {}), 'first_conv': 'prep.conv'}
    return build_model_with_cfg(
        MyrtleResNet9, 'resnet9_tricks', pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3)),
        **kwargs,
    )
