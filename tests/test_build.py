"""build.py: a recipe's tricks reach timm's own models under timm's names, or are refused in one line."""

import pytest
import torch

from timm_tricks.build import build_model
from timm_tricks.cli import main
from timm_tricks.config import load_config


def _last_bn_gammas(model):
    return torch.cat([block.bn2.weight.detach() for layer in (model.layer1, model.layer2, model.layer3, model.layer4)
                      for block in layer])


@pytest.mark.parametrize("zero_gamma", [True, False])
def test_zero_gamma_reaches_timms_resnet_as_zero_init_last(zero_gamma):
    # timm's ResNet zero-initialises each residual branch's last BN gamma by default (zero_init_last=True); the
    # recipe's model.zero_gamma decides it either way, as Bag of Tricks Sec. 3.1's trick.
    model = build_model(load_config("digits", ["model.name=resnet18", f"model.zero_gamma={zero_gamma}"]), 10)
    gammas = _last_bn_gammas(model)
    assert torch.equal(gammas, torch.zeros_like(gammas) if zero_gamma else torch.ones_like(gammas))
    first = model.layer1[0].bn1.weight
    assert torch.equal(first, torch.ones_like(first))  # the other BN layers keep gamma 1


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.name=efficientnet_b0", "model.zero_gamma=true"],
     "model 'efficientnet_b0' does not take model.zero_gamma (a trick of the recipe); drop it with "
     "--set model.zero_gamma=null"),
    (["model.name=vit_tiny_patch16_224", "model.init=xavier"],
     "model 'vit_tiny_patch16_224' does not take model.init (a trick of the recipe); drop it with "
     "--set model.init=null"),
    (["model.name=resnet18", "model.kwargs={colour: 1}"],
     "model 'resnet18' does not take model.kwargs.colour; drop it from model.kwargs"),
])
def test_a_trick_the_model_cannot_take_is_one_line_and_exit_2(tmp_path, capsys, overrides, message):
    argv = ["train", "--recipe", "digits", "--output", str(tmp_path / "run")]
    assert main(argv + [a for o in overrides for a in ("--set", o)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"timm-tricks: error: {message}"]
    assert not (tmp_path / "run").exists()  # the failed start leaves no folder behind
