"""Synchronised batch norm for every backend: torch's ``SyncBatchNorm`` on GPUs, a small all-reduce version on CPUs.

PyTorch's ``SyncBatchNorm`` (and DDP's check of it) only runs on GPU-like devices. On CPUs (gloo) this module's
:class:`AllReduceBatchNorm2d` normalises with the statistics of the global batch: each process all-reduces its
count, sum and sum of squares (in float64, autograd-aware), so ``P`` processes with ``b`` images each compute what
one process computes with ``P x b`` images, gradients included.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t, op=dist.ReduceOp.SUM)


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics cover the batch of every process (CPU-capable SyncBN)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        xd = x.double()
        local = torch.cat([xd.sum(dims), (xd * xd).sum(dims),
                           torch.full((1,), x.numel() / x.shape[1], dtype=torch.float64, device=x.device)])
        total = _all_reduce_sum(local)
        c = x.shape[1]
        count = total[-1]
        mean = total[:c] / count
        var = (total[c:2 * c] / count - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
                self.num_batches_tracked.add_(1)
        inv = torch.rsqrt(var + self.eps).to(x.dtype)
        y = (x - mean.to(x.dtype).view(1, -1, 1, 1)) * inv.view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make every batch norm synchronise over processes: timm's converter (torch ``SyncBatchNorm``) on GPUs,
    :class:`AllReduceBatchNorm2d` for plain ``BatchNorm2d`` layers on CPUs."""
    if device.type != "cpu":
        import timm

        return timm.layers.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        new = AllReduceBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = _convert_cpu(child)
        if converted is not child:
            setattr(module, name, converted)
    return module

