"""Parameter groups (no bias decay, BN-bias multipliers), linear scaling and the optimizer factory."""

import pytest
import torch
from torch import nn

from timm_tricks.build import optimizer_from_config, schedule_from_config
from timm_tricks.config import ConfigError, load_config, scale_lr
from timm_tricks.optim import classify_parameters, param_groups
from timm_tricks.schedule import TricksScheduler


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)


def test_linear_scaling_rule():
    # Bag of Tricks Sec. 3.1: 0.1 x b / 256.
    assert scale_lr(0.1, 1024, 256) == pytest.approx(0.4)
    assert scale_lr(0.1, 256, 256) == 0.1
    assert load_config("bag_of_tricks_efficient").scaled_lr() == pytest.approx(0.4)
    assert load_config("bag_of_tricks_baseline").scaled_lr() == pytest.approx(0.1)
    cfg = load_config("xception_deeplab", ["optim.linear_scaling=true", "optim.base_batch_size=32"])
    assert cfg.global_batch_size(num_processes=8) == 256
    assert cfg.scaled_lr(num_processes=8) == pytest.approx(0.05 * 8)


def test_classify_parameters():
    roles = classify_parameters(Tiny())
    assert roles == {"conv.weight": "weight", "conv.bias": "bias", "bn.weight": "norm_weight",
                     "bn.bias": "norm_bias", "fc.weight": "weight", "fc.bias": "bias"}


def _by_param(groups, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g for g in groups for p in g["params"]}


def test_no_bias_decay_groups():
    model = Tiny()
    groups = _by_param(param_groups(model, 1e-4, no_bias_decay=True), model)
    assert groups["conv.weight"]["weight_decay"] == 1e-4 and groups["fc.weight"]["weight_decay"] == 1e-4
    for name in ("conv.bias", "bn.weight", "bn.bias", "fc.bias"):
        assert groups[name]["weight_decay"] == 0.0
    groups = _by_param(param_groups(model, 1e-4, no_bias_decay=False), model)
    assert all(g["weight_decay"] == 1e-4 for g in groups.values())


def test_bn_bias_multipliers():
    # Myrtle post 8: BN biases get lr x 64 and weight decay / 64.
    model = Tiny()
    groups = _by_param(param_groups(model, 5e-4, bn_bias_lr_mult=64, bn_bias_wd_mult=1 / 64), model)
    assert groups["bn.bias"]["lr_scale"] == 64
    assert groups["bn.bias"]["weight_decay"] == pytest.approx(5e-4 / 64)
    assert "lr_scale" not in groups["bn.weight"] and groups["bn.weight"]["weight_decay"] == 5e-4


def test_every_trainable_parameter_in_exactly_one_group():
    model = Tiny()
    model.bn.weight.requires_grad_(False)
    groups = param_groups(model, 1e-4, no_bias_decay=True, bn_bias_lr_mult=64)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == 5


def test_create_optimizer_from_recipe_and_weight_decay_effect():
    cfg = load_config("bag_of_tricks_efficient")
    model = Tiny()
    opt = optimizer_from_config(model, cfg)
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)
    assert all(g["lr"] == pytest.approx(0.4) for g in opt.param_groups)
    # One SGD step with zero gradients: only decayed weights move, by lr * wd * w.
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        if n.endswith("weight") and not n.startswith("bn"):
            # Nesterov with zero momentum buffer: d = g + m*buf = (wd*w) * (1 + 0.9)
            assert torch.allclose(p, w0[n] - 0.4 * 1e-4 * w0[n] * 1.9, atol=1e-7)
        else:
            assert torch.equal(p, w0[n])


def test_scheduler_applies_lr_scale_to_bn_bias_group():
    cfg = load_config("myrtle_resnet9", ["model.name=resnet18d_tricks", "model.kwargs={}"])
    opt = optimizer_from_config(Tiny(), cfg)
    sched = TricksScheduler(opt, schedule_from_config(cfg, steps_per_epoch=10))
    sched.step_update(20)  # epoch 2: the peak of post 8's knots, lr 1.0 (recipe comment: cell 85)
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs[0] == pytest.approx(1.0) and lrs[-1] == pytest.approx(1.0 * 64)


def test_unknown_optimizer_name():
    with pytest.raises(ConfigError, match="unknown optim.name 'sgdd'"):
        load_config("digits", ["optim.name=sgdd"])
