"""Synchronised batch norm for every backend and every batch norm layer of this project's models and timm's.

:func:`convert_sync_batchnorm` makes each batch norm layer of a model normalise with the statistics of the global
batch (the batches of all processes), keeping what the layer does besides:

* ``nn.BatchNorm1d/2d/3d`` and timm's ``BatchNormAct2d`` (norm + drop + activation, e.g. ``efficientnet_b0`` and
  this project's ``wider_resnet*_tricks``): on devices where PyTorch's ``nn.SyncBatchNorm`` runs (CUDA, HPU, XPU,
  the private-use backend; ``torch/nn/modules/batchnorm.py``, ``SyncBatchNorm.forward``) timm's
  ``timm.layers.convert_sync_batchnorm`` converts them, to ``nn.SyncBatchNorm`` and to timm's ``SyncBatchNormAct``,
  which keeps the layer's ``drop`` and ``act``. Elsewhere (CPUs over gloo, where ``nn.SyncBatchNorm`` raises) they
  become :class:`AllReduceBatchNorm1d` / :class:`AllReduceBatchNorm2d` / :class:`AllReduceBatchNorm3d` /
  :class:`AllReduceBatchNormAct2d`.
* this project's :class:`~timm_tricks.models.GhostBatchNorm2d` (ghost BN of ``resnet9_tricks``) becomes
  :class:`AllReduceGhostBatchNorm2d` on every device (torch's and timm's converters would turn it into plain
  synchronised BN, losing its ghost batches).

The ``AllReduce*`` classes share one statistic, :func:`all_reduce_batch_norm`: every process sums count, sum and
sum of squares per channel (per ghost batch) in float64 and all-reduces them, differentiably (the backward
all-reduces the gradient), so ``P`` processes with ``b`` images each compute what one process
computes with ``P x b`` images: outputs, running statistics and (summed over processes, as DDP does) gradients.
This works over gloo (CPU) and NCCL (GPU) alike. The classes are subclasses of the layers they replace, and the
conversion swaps the layer's class in place (as ``torch.nn.utils.parametrize.register_parametrization`` does), so
the layer keeps its parameters (a frozen gamma stays ``requires_grad=False``), buffers, hooks, ``act`` and ``drop``
and its state dict keys; outside training, or without an initialised process group of more than one process, they
compute exactly what the original layer computes (as ``nn.SyncBatchNorm`` does, no synchronisation in eval).

**Synchronised ghost BN.** Ghost BN (Hoffer et al. 2017, arXiv:1705.08741; Page, "How to train your ResNet")
normalises each ghost batch of a batch with that ghost batch's statistics. Synchronised, the batch is the global
batch, the processes' batches one after the other in rank order, and ``num_splits`` cuts it into that many
contiguous ghost batches: ``P`` processes with ``b`` images and ``num_splits`` ghost batches compute exactly what
one process computes with ``P x b`` images and the same ``num_splits``. When ``num_splits`` is a multiple of ``P``
and the processes' batches are equal, every ghost batch lies inside one process, so its normalisation is the
process's own; a ghost batch that straddles two processes gets its statistics from both. The running statistics
are the mean over all ghost batches of the global batch, the same on every process. Why not "each process splits
its own batch into ``num_splits``" (ghost batches local by construction): the recipe's hyperparameter is the size
of a ghost batch (32 images in Page's final recipe, 16 splits of a batch of 512), and per-process splits would
shrink it with every process added to a fixed global batch, and could not make 2 x 32 images equal 1 x 64.

A ``_BatchNorm`` subclass other than those above (its forward unknown here), torch's ``SyncBatchNorm`` off a GPU,
and timm's batch-statistics layers that are not ``_BatchNorm`` (``InplaceAbn``, ``EvoNorm2dB0/B1/B2``) are refused
with a :class:`~timm_tricks.errors.ConfigError` naming the layer's type and module path: never skipped silently.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from timm.layers import BatchNormAct2d, SyncBatchNormAct, register_notrace_module
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import ConfigError
from .models.myrtle_resnet9 import GhostBatchNorm2d

__all__ = ['AllReduceBatchNorm1d', 'AllReduceBatchNorm2d', 'AllReduceBatchNorm3d', 'AllReduceBatchNormAct2d',
           'AllReduceGhostBatchNorm2d', 'all_reduce_batch_norm', 'convert_sync_batchnorm', 'is_synchronising']


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes of a group, differentiable: the gradient of a sum over processes of each process's
    loss with respect to one process's input is the sum of the processes' gradients with respect to the reduced
    tensor. (``torch.distributed.nn.functional.all_reduce`` does this too, but is deprecated in torch 2.x, and its
    suggested successor in ``torch.distributed._functional_collectives`` is private.)"""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        t = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        return t

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _AllReduceSum.apply(grad, ctx.group), None


def _all_reduce_sum(t: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Autograd-aware sum over processes (its backward all-reduces the gradient)."""
    return _AllReduceSum.apply(t, group)


def _group_rows(n: int, num_groups: int, device: torch.device, group: dist.ProcessGroup | None) -> torch.Tensor:
    """The ghost batch of each of this process's ``n`` samples, in the global batch (rank order)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    sizes = torch.zeros(world, dtype=torch.float64, device=device)
    sizes[rank] = n
    dist.all_reduce(sizes, group=group)  # every process's batch size, so a process knows where its batch starts
    counts = [int(s) for s in sizes.tolist()]
    total = sum(counts)
    if total % num_groups:
        raise ValueError(
            f'Synchronised ghost batch norm: global batch size {total} (per process {counts}) is not divisible by '
            f'num_splits={num_groups}; use a global batch size that is a multiple of {num_groups}')
    return (torch.arange(n, device=device) + sum(counts[:rank])) // (total // num_groups)


def all_reduce_batch_norm(
        x: torch.Tensor,
        running: tuple[torch.Tensor, torch.Tensor] | None = None,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        momentum: float = 0.1,
        eps: float = 1e-5,
        num_groups: int = 1,
        group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Training-mode batch norm over the global batch of all processes in ``group``, optionally in ghost batches.

    Each process sums, per channel (and per ghost batch), the element count, the sum and the sum of squares of its
    input in float64; one all-reduce gives the global ones, from which the mean and biased variance normalise
    the input (as ``F.batch_norm`` in training). With ``num_groups`` > 1 the global batch (the processes' batches
    in rank order) is cut into ``num_groups`` contiguous ghost batches, each normalised with its own statistics
    (the module docstring says why). Running buffers, if given, are updated in place with the global statistics:
    ``r <- (1 - momentum) r + momentum * stat``, the variance unbiased; with ghost batches ``stat`` is the mean over
    the ghost batches of each one's statistic, as :func:`timm_tricks.models.ghost_batch_norm` does.

    Args:
        x: Input of shape (N, C, ...), N >= 0 (a process may contribute no samples).
        running: Optional ``(running_mean, running_var)``, each of shape (C,), updated in place.
        weight: Optional per-channel scale (gamma).
        bias: Optional per-channel shift (beta).
        momentum: Running-stat update factor.
        eps: Added to the variance.
        num_groups: Ghost batches in the global batch; 1 is plain synchronised batch norm.
        group: Process group; None for the default one.

    Returns:
        The normalised tensor, same shape and dtype as ``x`` (computed in float32 or wider).

    Raises:
        ValueError: For input of fewer than 2 dimensions, or a global batch size not divisible by ``num_groups``.
    """
    if x.dim() < 2:
        raise ValueError(f'expected at least 2D input (got {x.dim()}D input)')
    n, c = x.shape[0], x.shape[1]
    spatial = tuple(range(2, x.dim()))
    xd = x.double()
    rows = torch.cat([xd.sum(spatial) if spatial else xd, (xd * xd).sum(spatial) if spatial else xd * xd,
                      torch.full((n, 1), float(math.prod(x.shape[2:])), dtype=torch.float64, device=x.device)], 1)
    if num_groups == 1:
        index = None
        local = rows.sum(0, keepdim=True)
    else:
        index = _group_rows(n, num_groups, x.device, group)
        local = rows.new_zeros(num_groups, 2 * c + 1).index_add(0, index, rows)
    total = _all_reduce_sum(local, group)  # (groups, 2C + 1): sums, sums of squares, count
    count = total[:, -1:]
    mean = total[:, :c] / count
    var = (total[:, c:2 * c] / count - mean * mean).clamp_min(0)  # biased, as batch norm normalises with
    if running is not None:
        running_mean, running_var = running
        with torch.no_grad():
            running_mean.lerp_(mean.mean(0).to(running_mean.dtype), momentum)
            unbiased = var * torch.where(count > 1, count / (count - 1).clamp_min(1), torch.ones_like(count))
            running_var.lerp_(unbiased.mean(0).to(running_var.dtype), momentum)
    ct = torch.promote_types(x.dtype, torch.float32)
    shape = (-1, c) + (1,) * len(spatial)
    scale = torch.rsqrt(var + eps)
    if index is None:
        mean, scale = mean[0].to(ct).view(shape), scale[0].to(ct).view(shape)
    else:
        mean, scale = mean[index].to(ct).view(shape), scale[index].to(ct).view(shape)
    y = (x.to(ct) - mean) * scale
    if weight is not None:
        y = y * weight.to(ct).view(shape)
    if bias is not None:
        y = y + bias.to(ct).view(shape)
    return y.to(x.dtype)


class _AllReduceMixin:
    """The forward of every ``AllReduce*`` class: :func:`all_reduce_batch_norm` in training when more than one
    process runs, the original layer's forward otherwise. ``num_splits`` (ghost batches) defaults to 1."""

    process_group: dist.ProcessGroup | None = None

    def _synchronising(self) -> bool:
        return (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self.process_group) > 1)

    def _after_norm(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._synchronising():
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        track = self.track_running_stats and self.num_batches_tracked is not None
        if track:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d
                factor = 1.0 / float(self.num_batches_tracked)
        y = all_reduce_batch_norm(
            x, (self.running_mean, self.running_var) if track else None, self.weight, self.bias,
            momentum=factor, eps=self.eps, num_groups=getattr(self, 'num_splits', 1), group=self.process_group)
        return self._after_norm(y)


@register_notrace_module
class AllReduceBatchNorm1d(_AllReduceMixin, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` whose training statistics cover the batch of every process (CPU-capable SyncBN)."""


@register_notrace_module
class AllReduceBatchNorm2d(_AllReduceMixin, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics cover the batch of every process (CPU-capable SyncBN)."""


@register_notrace_module
class AllReduceBatchNorm3d(_AllReduceMixin, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` whose training statistics cover the batch of every process (CPU-capable SyncBN)."""


@register_notrace_module
class AllReduceBatchNormAct2d(_AllReduceMixin, BatchNormAct2d):
    """timm's ``BatchNormAct2d`` synchronised: global-batch batch norm, then the layer's own ``drop`` and ``act``
    (in that order, as ``BatchNormAct2d.forward``)."""

    def _after_norm(self, y: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(y))


@register_notrace_module
class AllReduceGhostBatchNorm2d(_AllReduceMixin, GhostBatchNorm2d):
    """:class:`~timm_tricks.models.GhostBatchNorm2d` synchronised: ``num_splits`` ghost batches of the global batch
    (the module docstring says why that meaning), each normalised with its statistics gathered from every process
    that holds part of it."""


_CPU_CLASSES: dict[type, type] = {
    nn.BatchNorm1d: AllReduceBatchNorm1d,
    nn.BatchNorm2d: AllReduceBatchNorm2d,
    nn.BatchNorm3d: AllReduceBatchNorm3d,
    BatchNormAct2d: AllReduceBatchNormAct2d,
}
"""Layers that timm's converter handles where torch's SyncBatchNorm runs, and their all-reduce classes elsewhere."""

_SYNC_TYPES: tuple[type, ...] = (
    AllReduceBatchNorm1d, AllReduceBatchNorm2d, AllReduceBatchNorm3d, AllReduceBatchNormAct2d,
    AllReduceGhostBatchNorm2d, nn.SyncBatchNorm, SyncBatchNormAct)


def _native_device_types() -> tuple[str, ...]:
    """Device types on which ``nn.SyncBatchNorm`` synchronises (its forward's check, torch 2.x)."""
    return 'cuda', 'hpu', 'xpu', torch._C._get_privateuse1_backend_name()


def _batch_stat_layers_not_batchnorm() -> tuple[type, ...]:
    """timm layers that normalise with batch statistics in training without being a ``_BatchNorm``."""
    from timm.layers import EvoNorm2dB0, EvoNorm2dB1, EvoNorm2dB2, InplaceAbn

    return InplaceAbn, EvoNorm2dB0, EvoNorm2dB1, EvoNorm2dB2


def is_synchronising(module: nn.Module) -> bool:
    """Whether ``module`` is a batch norm layer class that synchronises its training statistics over processes."""
    return type(module) in _SYNC_TYPES


def _refuse(module: nn.Module, path: str, why: str) -> ConfigError:
    t = type(module)
    return ConfigError(f"train.sync_bn: cannot synchronise layer {path or '(the model itself)'!r} of type "
                       f"{t.__module__}.{t.__qualname__}: {why}; train without train.sync_bn or use a model whose "
                       f"batch norm layers are BatchNorm1d/2d/3d, timm's BatchNormAct2d or GhostBatchNorm2d")


def _swap(module: nn.Module, cls: type, process_group: dist.ProcessGroup | None) -> nn.Module:
    module.__class__ = cls  # cls subclasses type(module) and adds no state: everything the layer holds stays
    if process_group is not None:
        module.process_group = process_group
    return module


def _convert(module: nn.Module, path: str, native: bool, device_type: str,
             process_group: dist.ProcessGroup | None) -> nn.Module:
    t = type(module)
    if t in _SYNC_TYPES:
        if not native and issubclass(t, nn.SyncBatchNorm):
            raise _refuse(module, path, f"torch's SyncBatchNorm does not run on {device_type} devices")
        return module
    if t in _CPU_CLASSES:
        if native:
            import timm

            return timm.layers.convert_sync_batchnorm(module, process_group)
        return _swap(module, _CPU_CLASSES[t], process_group)
    if t is GhostBatchNorm2d:
        return _swap(module, AllReduceGhostBatchNorm2d, process_group)
    if isinstance(module, _BatchNorm):
        raise _refuse(module, path, 'a batch norm subclass whose forward timm_tricks does not know')
    if isinstance(module, _batch_stat_layers_not_batchnorm()):
        raise _refuse(module, path, 'a layer that normalises with batch statistics but has no synchronised version')
    for name, child in module.named_children():
        converted = _convert(child, f'{path}.{name}' if path else name, native, device_type, process_group)
        if converted is not child:
            setattr(module, name, converted)
    return module


def convert_sync_batchnorm(model: nn.Module, device: torch.device | str,
                           process_group: dist.ProcessGroup | None = None) -> nn.Module:
    """Make every batch norm layer of ``model`` synchronise its training statistics over processes, keeping what
    the layer does besides (ghost batches, drop and activation, frozen parameters); see the module docstring.

    The model is converted in place (layers replaced in their parents, or their class swapped) and returned.

    Args:
        model: The model; a batch norm layer itself is converted too.
        device: The device the model trains on: where torch's ``SyncBatchNorm`` runs (CUDA, ...) timm's converter
            handles plain and BN-act layers; elsewhere (CPU) this module's all-reduce classes do.
        process_group: Process group to synchronise over; None for the default one.

    Returns:
        The converted model; every ``_BatchNorm`` in it satisfies :func:`is_synchronising`.

    Raises:
        ConfigError: For a layer that cannot be synchronised (an unknown ``_BatchNorm`` subclass, torch's
            ``SyncBatchNorm`` off a GPU, timm's ``InplaceAbn`` / ``EvoNorm2dB*``), naming its type and path.
    """
    device_type = torch.device(device).type
    native = device_type in _native_device_types()
    model = _convert(model, '', native, device_type, process_group)
    left = [name for name, m in model.named_modules() if isinstance(m, _BatchNorm) and not is_synchronising(m)]
    if left:  # the walk above refuses what it cannot convert; this guards the guarantee
        raise ConfigError(f"train.sync_bn: batch norm layers left unsynchronised: {', '.join(left)}")
    return model
