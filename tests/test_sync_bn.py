"""Synchronised batch norm (timm_tricks.sync_bn): two gloo processes on 127.0.0.1 with a share of a batch each
compute what one process computes with the whole batch (train-mode outputs, running statistics, eval outputs and
gradients summed over the processes, as DDP sums them), for the project's models and single layers; every batch
norm layer is converted; a layer that cannot be synchronised is refused.

All processes run once, in a module fixture (``torch.multiprocessing.spawn``); the models run in float64 at 16 px.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from timm.layers import BatchNormAct2d, SplitBatchNorm2d, SyncBatchNormAct
from torch.nn.modules.batchnorm import _BatchNorm

import timm_tricks.models  # noqa: F401  (registers the models)
from timm_tricks.errors import ConfigError
from timm_tricks.models import GhostBatchNorm2d
from timm_tricks.models.wider_resnet import WIDER_RESNET_WIDTHS
from timm_tricks.sync_bn import (
    AllReduceBatchNorm2d,
    AllReduceBatchNormAct2d,
    AllReduceGhostBatchNorm2d,
    convert_sync_batchnorm,
    is_synchronising,
)

WORLD = 2
TOL = 1e-5

# The wider ResNet at half its widths (64 to 2048 channels): the same 15 BN-act layers, 1/4 of the 60M parameters,
# 1/6 of the time in float64. The conversion test builds every model at its default widths.
HALF_WIDTHS = tuple(tuple(w // 2 for w in ws) for ws in WIDER_RESNET_WIDTHS)
# name -> (timm model name, kwargs)
MODELS: dict[str, tuple[str, dict]] = {
    'resnet18d': ('resnet18d_tricks', {}),
    'wider_resnet16': ('wider_resnet16_tricks', dict(widths=HALF_WIDTHS)),
    'resnet9': ('resnet9_tricks', {}),
    'resnet9_ghost_frozen': ('resnet9_tricks', dict(ghost_bn_splits=4, bn_weight_frozen=True)),
    'efficientnet_b0': ('efficientnet_b0', {}),  # conversion only (its BN-act layers are wider_resnet16's kind)
}
# name -> (layer builder, per-process batch sizes, per-sample shape); ghost batches that straddle two processes,
# unequal batches, momentum None, a frozen gamma, BN-act with its activation
LAYERS: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]] = {
    'ghost3_straddling': ('ghost3', (24, 24), (5, 3, 3)),
    'ghost3_unequal': ('ghost3', (20, 28), (5, 3, 3)),
    'ghost4_frozen_cumulative': ('ghost4_frozen_cumulative', (16, 16), (5, 2, 2)),
    'bn2d_unequal': ('bn2d', (7, 13), (5, 3, 3)),
    'bn1d': ('bn1d', (9, 11), (5,)),
    'bn_act_silu': ('bn_act_silu', (12, 12), (5, 3, 3)),
}
COMPARED = [*LAYERS, 'resnet18d', 'wider_resnet16', 'resnet9', 'resnet9_ghost_frozen']


def _layer(kind: str) -> nn.Module:
    if kind == 'ghost3':
        m = GhostBatchNorm2d(5, num_splits=3)
    elif kind == 'ghost4_frozen_cumulative':
        m = GhostBatchNorm2d(5, num_splits=4, momentum=None)
        m.weight.requires_grad_(False)
    elif kind == 'bn2d':
        m = nn.BatchNorm2d(5)
    elif kind == 'bn1d':
        m = nn.BatchNorm1d(5)
    else:
        m = BatchNormAct2d(5, act_layer='silu')
    with torch.no_grad():  # not the identity, so that gradients and the affine part are tested
        for p in m.parameters():
            p.uniform_(0.5, 1.5)
        m.running_mean.uniform_(-1, 1)
    return m


def _build(name: str, default_widths: bool = False) -> tuple[nn.Module, torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """The (seeded, float64, train-mode) model, a global input batch, loss weights and per-process batch sizes."""
    torch.manual_seed(0)
    if name in MODELS:
        model_name, kwargs = MODELS[name]
        if default_widths:
            kwargs = {k: v for k, v in kwargs.items() if k != 'widths'}
        model = timm.create_model(model_name, num_classes=10, **kwargs)
        sizes, shape = (32,) * WORLD, (3, 16, 16)
    else:
        kind, sizes, shape = LAYERS[name]
        model = _layer(kind)
    model = model.double().train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(sum(sizes), *shape, generator=g, dtype=torch.float64) * 2 + 0.5
    out_shape = (sum(sizes), 10) if name in MODELS else x.shape
    w = torch.randn(out_shape, generator=g, dtype=torch.float64)
    return model, x, w, sizes


def _run(name: str, rank: int, world: int) -> dict:
    """One train-mode step on this process's share (all of it with world 1), then an eval forward."""
    model, x, w, sizes = _build(name)
    if world > 1:
        model = convert_sync_batchnorm(model, torch.device('cpu'))
    else:
        sizes = (sum(sizes),)
    lo = sum(sizes[:rank])
    xs, ws = x[lo:lo + sizes[rank]], w[lo:lo + sizes[rank]]
    out = model(xs)
    (out * ws).sum().backward()
    model.eval()
    with torch.no_grad():
        evaluated = model(xs)
    return {
        'out': out.detach(),
        'eval': evaluated,
        'buffers': {k: v.clone() for k, v in model.named_buffers()},
        'grads': {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
        'frozen': sorted(k for k, p in model.named_parameters() if not p.requires_grad),
        'synced': sum(is_synchronising(m) for m in model.modules()),
    }


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=WORLD)
    try:
        results = {name: _run(name, rank, WORLD) for name in COMPARED}
    finally:
        dist.destroy_process_group()
    torch.save(results, Path(out) / f'rank{rank}.pt')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def two_processes(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp('sync_bn')
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f'rank{r}.pt') for r in range(WORLD)]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize('name', COMPARED)
def test_two_processes_match_one_process_with_the_whole_batch(two_processes, name):
    one = _run(name, 0, 1)
    ranks = [r[name] for r in two_processes]
    assert ranks[0]['synced'] == ranks[1]['synced'] > 0 and one['synced'] == 0
    # train-mode outputs: the processes' shares, in rank order, are the one process's output
    assert _max_diff(torch.cat([r['out'] for r in ranks]), one['out']) < TOL
    # running statistics after the step: the same on every process, and the one process's
    for r in ranks:
        assert r['buffers'].keys() == one['buffers'].keys()
        for k, v in one['buffers'].items():
            if k.endswith('num_batches_tracked'):
                assert r['buffers'][k].item() == v.item() == 1, k
            else:
                assert _max_diff(r['buffers'][k], v) < TOL, k
    assert _max_diff(torch.cat([r['eval'] for r in ranks]), one['eval']) < TOL
    # gradients: the processes' sum (what DDP reduces) is the one process's gradient
    assert ranks[0]['grads'].keys() == ranks[1]['grads'].keys() == one['grads'].keys()
    for k, g in one['grads'].items():
        assert _max_diff(ranks[0]['grads'][k] + ranks[1]['grads'][k], g) < TOL * max(1.0, g.abs().max().item()), k
    assert ranks[0]['frozen'] == one['frozen']
    if name in ('resnet9_ghost_frozen', 'ghost4_frozen_cumulative'):
        assert one['frozen'] and all(k.endswith('weight') for k in one['frozen'])


def test_without_synchronisation_the_shares_differ(two_processes):
    """The comparison has teeth: each process normalising its own share alone gives other outputs."""
    model, x, _, sizes = _build('bn2d_unequal')
    alone = torch.cat([model(x[:sizes[0]]), model(x[sizes[0]:])])
    synced = torch.cat([r['bn2d_unequal']['out'] for r in two_processes])
    assert _max_diff(alone, synced) > 0.01


def _bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, (_BatchNorm, BatchNormAct2d)) for m in model.modules())


@pytest.mark.parametrize('name,count', [('resnet18d', 22), ('wider_resnet16', 15), ('resnet9', 8),
                                        ('resnet9_ghost_frozen', 8), ('efficientnet_b0', 49)])
@pytest.mark.parametrize('device', ['cpu', 'cuda'])
def test_every_batch_norm_layer_is_converted(name, count, device):
    # conversion for CUDA builds torch / timm modules and needs no GPU (only their forward does)
    model, *_ = _build(name, default_widths=True)
    before = {k: (type(m), m.weight, m.act if isinstance(m, BatchNormAct2d) else None)
              for k, m in model.named_modules() if isinstance(m, _BatchNorm)}
    assert len(before) == _bn_count(model) == count
    model = convert_sync_batchnorm(model, torch.device(device))
    after = {k: m for k, m in model.named_modules() if isinstance(m, _BatchNorm)}
    assert after.keys() == before.keys() and sum(is_synchronising(m) for m in model.modules()) == count
    for k, m in after.items():
        kind, weight, act = before[k]
        assert m.weight is weight  # the same parameter: a frozen gamma stays frozen, optimizers see it
        if kind is GhostBatchNorm2d:
            assert type(m) is AllReduceGhostBatchNorm2d and m.num_splits == 4
        elif kind is BatchNormAct2d:
            assert type(m) is (SyncBatchNormAct if device == 'cuda' else AllReduceBatchNormAct2d)
            assert m.act is act
        else:
            assert type(m) is (nn.SyncBatchNorm if device == 'cuda' else AllReduceBatchNorm2d)
    frozen = [k for k, p in model.named_parameters() if not p.requires_grad]
    assert len(frozen) == (count if name == 'resnet9_ghost_frozen' else 0)


def test_a_converted_model_without_a_process_group_computes_what_the_original_does():
    for name in ('ghost3_straddling', 'bn_act_silu'):
        original, x, _, _ = _build(name)
        converted, *_ = _build(name)
        converted = convert_sync_batchnorm(converted, 'cpu')
        assert type(converted) is not type(original)
        assert torch.equal(converted(x), original(x))
        assert all(torch.equal(a, b) for a, b in zip(converted.buffers(), original.buffers(), strict=True))
        assert converted.state_dict().keys() == original.state_dict().keys()


class MyBatchNorm(nn.BatchNorm2d):
    """A subclass whose forward the converter does not know."""


@pytest.mark.parametrize('layer,device,path,type_name', [
    (MyBatchNorm(4), 'cpu', 'body.1', 'test_sync_bn.MyBatchNorm'),
    (MyBatchNorm(4), 'cuda', 'body.1', 'test_sync_bn.MyBatchNorm'),
    (SplitBatchNorm2d(4, num_splits=2), 'cuda', 'body.1', 'timm.layers.split_batchnorm.SplitBatchNorm2d'),
    (nn.SyncBatchNorm(4), 'cpu', 'body.1', 'torch.nn.modules.batchnorm.SyncBatchNorm'),
])
def test_a_layer_that_cannot_be_synchronised_is_refused(layer, device, path, type_name):
    model = nn.Sequential()
    model.add_module('body', nn.Sequential(nn.Conv2d(3, 4, 1), layer))
    with pytest.raises(ConfigError) as e:
        convert_sync_batchnorm(model, device)
    message = str(e.value)
    assert '\n' not in message and repr(path) in message and type_name in message
