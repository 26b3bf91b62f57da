"""build.py: a recipe's tricks reach timm's own models under timm's names, or are refused in one line."""

import pytest
import torch

from timm_tricks.build import build_model, keep_ghost_batch_size
from timm_tricks.cli import main
from timm_tricks.config import load_config
from timm_tricks.errors import ConfigError


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


def _pretrained_cfg(name):
    import timm

    return timm.create_model(name, pretrained=False).pretrained_cfg  # the model's own, a second way to read it


def test_pretrained_weights_bring_their_input_statistics():
    from timm_tricks.build import with_pretrained_transforms

    cfg = with_pretrained_transforms(load_config("digits", ["model.name=resnet18", "model.pretrained=true",
                                                            "data.image_size=224"]))
    timm_cfg = _pretrained_cfg("resnet18")  # mean (0.485, 0.456, 0.406), bicubic, crop_pct 0.95
    assert (cfg.augment.mean, cfg.augment.std) == (list(timm_cfg["mean"]), list(timm_cfg["std"]))
    assert cfg.augment.interpolation == timm_cfg["interpolation"] == "bicubic"
    assert cfg.augment.eval_resize == 235  # floor(224 / 0.95), timm's transforms_factory
    untouched = load_config("digits", ["model.name=resnet18"])
    assert with_pretrained_transforms(untouched) is untouched  # no pretrained weights: the recipe's own


def test_a_key_the_user_sets_wins_over_the_pretrained_config():
    from timm_tricks.build import with_pretrained_transforms

    cfg = with_pretrained_transforms(load_config("digits", [
        "model.name=vit_tiny_patch16_224", "model.pretrained=true", "augment.mean=[0.1, 0.2, 0.3]",
        "augment.std=[0.4, 0.5, 0.6]", "augment.interpolation=nearest"]))
    assert (cfg.augment.mean, cfg.augment.std, cfg.augment.interpolation) == \
        ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6], "nearest")
    assert cfg.augment.eval_resize == 35  # floor(32 / 0.9) at digits' 32 px: the key left open follows the model


def test_a_run_from_a_weights_file_records_the_resolved_transforms_in_config_yaml(tmp_path):
    import timm
    import yaml
    from safetensors.torch import save_file

    from timm_tricks.train import Trainer

    weights = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18", num_classes=10).state_dict(), str(weights))
    cfg = load_config("digits", ["model.name=resnet18", "model.pretrained=true", f"model.pretrained_file={weights}",
                                 "model.zero_gamma=null", "data.image_size=16"])
    trainer = Trainer(cfg, tmp_path / "run")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["augment"]
    assert saved["mean"] == list(_pretrained_cfg("resnet18")["mean"]) and saved["interpolation"] == "bicubic"
    assert trainer.batches.data.mean == tuple(saved["mean"])  # the in-memory batches normalise with them
    first = trainer.accelerator.unwrap_model(trainer.model).conv1.weight
    assert torch.equal(first.detach().cpu(), load_file_tensor(weights, "conv1.weight"))


def load_file_tensor(path, key):
    from safetensors.torch import load_file

    return load_file(str(path))[key]


def test_the_file_pipeline_resizes_with_the_configured_interpolation():
    from torchvision.transforms import v2

    from timm_tricks.augment import bot_eval_transform, bot_train_transform

    resize = bot_eval_transform(32, 35, interpolation="bicubic").transforms[0]
    crop = bot_train_transform(32, interpolation="bicubic").transforms[0]
    assert (resize.interpolation, crop.interpolation) == (v2.InterpolationMode.BICUBIC,) * 2
    assert bot_eval_transform(32, 35).transforms[0].interpolation == v2.InterpolationMode.BILINEAR


def _ghost_splits(model):
    from timm_tricks.models import GhostBatchNorm2d

    return {m.num_splits for m in model.modules() if isinstance(m, GhostBatchNorm2d)}


@pytest.mark.parametrize("world, accum, synchronised, splits", [
    (1, 1, False, 16),  # the recipe as written: 16 ghost batches of 32 in a batch of 512
    (8, 1, False, 2),  # 64 images a process: 2 ghost batches of 32, not 16 of 4
    (8, 1, True, 16),  # synchronised BN sees the global batch again
    (1, 4, False, 4),  # 128 images a micro-batch
    (8, 2, False, 1),  # 32 images: one ghost batch, plain BN
])
def test_ghost_batches_keep_the_recipes_32_images_however_the_batch_is_spread(world, accum, synchronised, splits):
    cfg = load_config("myrtle_resnet9", [f"train.grad_accum_steps={accum}"])
    model = build_model(cfg, 10)
    assert _ghost_splits(model) == {16}
    keep_ghost_batch_size(model, cfg, world, synchronised)
    assert _ghost_splits(model) == {splits}
    assert cfg.per_device_batch_size(world) * (world if synchronised else 1) // splits == 32


def test_ghost_batches_that_a_layers_batch_cannot_hold_are_one_line():
    cfg = load_config("myrtle_resnet9", [])
    with pytest.raises(ConfigError, match=r"^ghost batch norm: 16 splits of the global batch 512 are ghost batches "
                                          r"of 32 images, and each layer normalises 16 images together \(32 "
                                          r"process\(es\), 1 accumulation step\(s\)\), which must be a whole "
                                          r"number of them: change data.batch_size or model.kwargs.ghost_bn_splits$"):
        keep_ghost_batch_size(build_model(cfg, 10), cfg, 32, False)
    cfg = load_config("myrtle_resnet9", ["data.batch_size=500"])
    with pytest.raises(ConfigError, match="global batch 500 are ghost batches of 500/16 images"):
        keep_ghost_batch_size(build_model(cfg, 10), cfg, 1, False)


def test_a_micro_batch_with_fewer_splits_normalises_as_its_part_of_the_whole_batch(tmp_path):
    # what keeping the ghost size means, computed the second way: ghost BN of the first half of a batch in half the
    # splits equals the first half of ghost BN of the whole batch; and the Trainer sets it up so when it accumulates
    from timm_tricks.models.myrtle_resnet9 import ghost_batch_norm
    from timm_tricks.train import Trainer

    x = torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ghost_batch_norm(x[:32], 2), ghost_batch_norm(x, 4)[:32], atol=1e-6)
    assert not torch.allclose(ghost_batch_norm(x[:32], 4), ghost_batch_norm(x, 4)[:32], atol=1e-3)
    cfg = load_config("myrtle_resnet9", ["data.source=synthetic:128", "data.batch_size=64", "train.epochs=1",
                                         "train.grad_accum_steps=2", "model.kwargs.ghost_bn_splits=4",
                                         "ema.enabled=false", "train.best_metric=eval_top1", "train.precision='no'",
                                         "train.log_with=[none]"])
    trainer = Trainer(cfg, tmp_path / "run")
    assert _ghost_splits(trainer.accelerator.unwrap_model(trainer.model)) == {2}
