"""Optimizer factory: parameter groups for no bias decay and the BN-bias multipliers, and the linear scaling rule.

The optimizer itself comes from :func:`timm.optim.create_optimizer_v2`; this module only decides the parameter
groups. It takes plain arguments; :func:`timm_tricks.build.optimizer_from_config` reads them from a config.
The linear scaling rule, :func:`timm_tricks.config.scale_lr`, lives with the config (which derives the scaled peak
without torch).

Sources:
    * Linear scaling (Goyal et al. 2017; He et al., "Bag of Tricks", CVPR 2019, Sec. 3.1): lr = 0.1 x b / 256.
    * No bias decay (Bag of Tricks Sec. 3.1, after Jia et al. 2018): weight decay only on the weights of
      convolution and fully-connected layers; biases and BN gamma/beta are left unregularised.
    * BN-bias multipliers (Page, "How to train your ResNet 8: Bag of tricks", Myrtle.ai 2019): the learning rate
      of BatchNorm biases is multiplied by 64 and their weight decay divided by 64.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.optim import create_optimizer_v2
from torch import nn

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def classify_parameters(model: nn.Module) -> dict[str, str]:
    """Name each trainable parameter's role: ``weight``, ``bias``, ``norm_weight`` or ``norm_bias``.

    A parameter of a normalisation layer (BatchNorm and its subclasses, GroupNorm, LayerNorm) is ``norm_*``;
    any other parameter named ``bias`` is ``bias``; the rest (convolution and linear weights) are ``weight``.
    """
    roles: dict[str, str] = {}
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, NORM_TYPES)
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            full = f"{module_name}.{param_name}" if module_name else param_name
            if is_norm:
                roles[full] = "norm_bias" if param_name == "bias" else "norm_weight"
            elif param_name == "bias" or param.ndim <= 1:
                roles[full] = "bias"
            else:
                roles[full] = "weight"
    return roles


def param_groups(model: nn.Module, weight_decay: float, no_bias_decay: bool = False,
                 bn_bias_lr_mult: float = 1.0, bn_bias_wd_mult: float = 1.0) -> list[dict[str, Any]]:
    """Parameter groups implementing no bias decay and the BN-bias multipliers.

    Args:
        model: The network.
        weight_decay: The weight decay of convolution and linear weights.
        no_bias_decay: Biases and normalisation gamma/beta get weight decay 0.
        bn_bias_lr_mult: Learning-rate multiplier of normalisation biases, as ``lr_scale`` (timm schedulers and
            :class:`timm_tricks.schedule.TricksScheduler` apply it).
        bn_bias_wd_mult: Weight-decay multiplier of normalisation biases (when they are decayed at all).

    Returns:
        Non-empty groups, each ``{'params', 'weight_decay'[, 'lr_scale']}`` with a ``'name'`` for logs.
    """
    roles = classify_parameters(model)
    params = dict(model.named_parameters())
    other_wd = 0.0 if no_bias_decay else weight_decay
    specs = {
        "weight": dict(weight_decay=weight_decay),
        "bias": dict(weight_decay=other_wd),
        "norm_weight": dict(weight_decay=other_wd),
        "norm_bias": dict(weight_decay=other_wd * bn_bias_wd_mult, lr_scale=bn_bias_lr_mult),
    }
    # Merge roles with identical settings so the optimizer has as few groups as possible.
    groups: dict[tuple, dict[str, Any]] = {}
    for name, role in roles.items():
        spec = specs[role]
        key = (spec["weight_decay"], spec.get("lr_scale", 1.0))
        group = groups.setdefault(key, dict(params=[], names=[], weight_decay=spec["weight_decay"]))
        if key[1] != 1.0:
            group["lr_scale"] = key[1]
        group["params"].append(params[name])
        group["names"].append(name)
    return list(groups.values())


def create_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9,
                     no_bias_decay: bool = False, bn_bias_lr_mult: float = 1.0,
                     bn_bias_wd_mult: float = 1.0) -> torch.optim.Optimizer:
    """timm's optimizer ``name`` (``sgd``, ``nesterov``, ``adamw``, ...: :func:`timm.optim.create_optimizer_v2`) over
    :func:`param_groups`, at peak learning rate ``lr`` (already linearly scaled: :func:`timm_tricks.config.scale_lr`).

    :func:`timm_tricks.build.optimizer_from_config` reads these from a config's ``optim`` section.
    """
    groups = param_groups(model, weight_decay, no_bias_decay, bn_bias_lr_mult, bn_bias_wd_mult)
    for g in groups:
        g.pop("names")
    return create_optimizer_v2(groups, opt=name, lr=lr, weight_decay=weight_decay, momentum=momentum)
