"""Recipes, overrides and validation."""


import pytest
import yaml

from timm_tricks.config import ConfigError, from_dict, list_recipes, load_config, parse_overrides

EXPECTED_RECIPES = {"bag_of_tricks_baseline", "bag_of_tricks_efficient", "bag_of_tricks", "xception",
                    "xception_deeplab", "wider_resnet", "myrtle_resnet9", "digits"}


def test_all_recipes_ship_and_load():
    assert EXPECTED_RECIPES <= set(list_recipes())
    for name in list_recipes():
        cfg = load_config(name)
        assert cfg.name == name and cfg.description and cfg.source


def test_recipe_numbers_from_the_papers():
    base = load_config("bag_of_tricks_baseline")
    assert (base.data.batch_size, base.optim.lr, base.optim.name, base.train.epochs) == (256, 0.1, "sgd", 120)
    assert (base.schedule.name, base.schedule.milestones, base.schedule.gamma) == ("step", [30, 60, 90], 0.1)
    assert base.model.init == "xavier" and base.model.name == "resnet50a_tricks"
    eff = load_config("bag_of_tricks_efficient")
    assert eff.data.batch_size == 1024 and eff.optim.linear_scaling and eff.scaled_lr() == pytest.approx(0.4)
    assert eff.schedule.warmup_epochs == 5 and eff.model.zero_gamma and eff.optim.no_bias_decay
    assert eff.train.precision == "fp16"
    bot = load_config("bag_of_tricks")
    assert bot.model.name == "resnet50d_tricks" and bot.schedule.name == "cosine"
    assert bot.loss.label_smoothing == 0.1 and bot.loss.smoothing_form == "paper"
    assert bot.mixup.alpha == 0.2 and bot.train.epochs == 200
    assert bot.distill.teacher and bot.distill.temperature == 20
    assert bot.schedule.milestones == [30, 60, 90]  # inherited, unused by cosine
    x = load_config("xception")
    assert (x.optim.lr, x.optim.momentum, x.optim.weight_decay, x.model.drop_rate) == (0.045, 0.9, 1e-5, 0.5)
    assert (x.schedule.name, x.schedule.decay_rate, x.schedule.decay_every) == ("exponential", 0.94, 2)
    d = load_config("xception_deeplab")
    assert (d.optim.name, d.optim.lr, d.optim.weight_decay, d.data.batch_size_per_device) == ("sgd", 0.05, 4e-5, 32)
    assert d.model.kwargs == {"bn_eps": 1e-3, "bn_momentum": 3e-4, "dw_act": False} and d.data.image_size == 299
    w = load_config("wider_resnet")
    assert (w.train.epochs, w.optim.lr, w.schedule.name, w.schedule.min_lr, w.data.batch_size) == (
        90, 0.1, "linear", 0.0, 256)
    m = load_config("myrtle_resnet9")
    assert m.data.batch_size == 512 and m.loss.label_smoothing == 0.2 and m.ema.enabled and m.eval.tta_flip
    assert m.model.kwargs["act"] == "celu" and m.model.kwargs["ghost_bn_splits"] == 16
    assert m.optim.bn_bias_lr_mult == 64 and m.schedule.name == "piecewise" and m.train.epochs == 10


def test_overrides_are_parsed_as_yaml_and_nested():
    assert parse_overrides(["optim.lr=0.2", "schedule.milestones=[1, 2]", "distill.teacher=null", "name=x"]) == {
        "optim": {"lr": 0.2}, "schedule": {"milestones": [1, 2]}, "distill": {"teacher": None}, "name": "x"}
    cfg = load_config("digits", ["optim.lr=0.3", "train.epochs=2", "model.kwargs={drop_path_rate: 0.1}"])
    assert cfg.optim.lr == 0.3 and cfg.train.epochs == 2 and cfg.model.kwargs == {"drop_path_rate": 0.1}


def test_int_promotes_to_float_but_not_the_reverse():
    assert load_config("digits", ["optim.lr=1"]).optim.lr == 1.0
    assert load_config("digits", ["optim.weight_decay=1e-4"]).optim.weight_decay == 1e-4  # YAML 1.1 string
    with pytest.raises(ConfigError, match=r"train.epochs=2.5 must be int"):
        load_config("digits", ["train.epochs=2.5"])
    with pytest.raises(ConfigError, match="optim.linear_scaling='yes please' must be bool"):
        load_config("digits", ["optim.linear_scaling=yes please"])


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'; did you mean 'optim.lr'"),
    ("lr=1", "did you mean 'optim.lr'"),
    ("optim.lr=0", r"optim.lr=0.0 is out of range: must be > 0.0"),
    ("loss.label_smoothing=1.0", "must be < 1.0"),
    ("schedule.name=cosin", "schedule.name='cosin' is not a valid choice; valid: constant, cosine"),
    ("train.precision=fp8", "valid: no, fp16, bf16"),
    ("schedule.knots=[[0, 1], [2]]", r"schedule.knots\[1\]=\[2.0\] must be an \[epoch, multiplier\] pair"),
    ("optim=3", "optim must be a mapping"),
    ("mixup.off_epochs=500", "exceeds train.epochs"),
    ("broken", "must look like section.key=value"),
    ("model.name=resnet50d_trick", "unknown model.name 'resnet50d_trick'; did you mean 'resnet50d_tricks'"),
    ("distill.teacher=resnet152e", "unknown distill.teacher 'resnet152e'"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("digits", [override])


def test_unknown_recipe_lists_choices():
    with pytest.raises(ConfigError, match="unknown recipe 'bag_of_trick'; did you mean 'bag_of_tricks'"):
        load_config("bag_of_trick")


def test_recipe_file_with_base_and_cycle(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("base: bag_of_tricks\nname: child\noptim:\n  lr: 0.2\n")
    cfg = load_config(child)
    assert cfg.optim.lr == 0.2 and cfg.model.name == "resnet50d_tricks" and cfg.name == "child"
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\n")
    b.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(a)
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_resolved_yaml_round_trips():
    for name in list_recipes():
        cfg = load_config(name)
        again = from_dict(yaml.safe_load(cfg.to_yaml()))
        assert again == cfg


def test_batch_split_over_processes():
    cfg = load_config("bag_of_tricks_efficient")
    assert cfg.per_device_batch_size(8) == 128
    with pytest.raises(ConfigError, match="does not split"):
        cfg.per_device_batch_size(3)


@pytest.mark.parametrize("name", sorted(EXPECTED_RECIPES))
def test_every_recipe_builds_its_model_and_optimizer(name):
    import timm
    import torch

    from timm_tricks.build import optimizer_from_config, schedule_from_config
    from timm_tricks.schedule import TricksScheduler

    cfg = load_config(name)
    kwargs = cfg.model_kwargs(num_classes=7)
    model = timm.create_model(cfg.model.name, **kwargs)
    assert model.num_classes == 7
    if cfg.model.drop_rate is not None:
        assert model.drop_rate == cfg.model.drop_rate
    optimizer = optimizer_from_config(model, cfg)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == n_params
    scheduler = TricksScheduler(optimizer, schedule_from_config(cfg, steps_per_epoch=3))
    scheduler.step_update(3 * cfg.train.epochs - 1)
    assert all(torch.isfinite(torch.tensor(g["lr"])) for g in optimizer.param_groups)


def test_model_kwargs_pass_only_set_options():
    cfg = load_config("bag_of_tricks_baseline")
    assert cfg.model_kwargs(10) == {"num_classes": 10, "pretrained": False, "init": "xavier", "zero_gamma": False}
    cfg = load_config("myrtle_resnet9", ["model.pretrained=true", "model.pretrained_file=/w.safetensors"])
    kwargs = cfg.model_kwargs(10)
    assert kwargs["pretrained_cfg_overlay"] == {"file": "/w.safetensors"} and kwargs["ghost_bn_splits"] == 16
    assert "zero_gamma" not in kwargs and "init" not in kwargs


def test_layers_apply_in_order_and_the_readme_call_still_works():
    tour = load_config("bag_of_tricks", ["optim.lr=0.2", "train.epochs=90"])
    assert (tour.optim.lr, tour.train.epochs) == (0.2, 90)
    cfg = load_config("digits", ["optim.lr=0.2", "train.epochs=5"], {"optim.lr": 0.3}, {"train": {"epochs": 7}},
                      "mixup.alpha=0.2")
    assert (cfg.optim.lr, cfg.train.epochs, cfg.mixup.alpha) == (0.3, 7, 0.2)
    assert cfg.model.name == "resnet18d_tricks"  # the rest of the recipe stays


def test_names_are_checked_against_timm_only_when_asked():
    cfg = load_config("digits", ["model.name=no_such_net"], check_names=False)
    assert cfg.model.name == "no_such_net"
    with pytest.raises(ConfigError, match="unknown model.name 'no_such_net'"):
        from_dict(cfg.to_dict())


def test_each_choice_list_has_one_home():
    import dataclasses

    from timm_tricks import augment, choices, config, data, losses, schedule, tune
    from timm_tricks.models import resnet_tricks

    def field_choices(section, name):
        return {f.name: f for f in dataclasses.fields(section)}[name].metadata["choices"]

    assert field_choices(config.ScheduleConfig, "name") is schedule.SCHEDULES is choices.SCHEDULES
    assert field_choices(config.LossConfig, "smoothing_form") is losses.SMOOTHING_FORMS is choices.SMOOTHING_FORMS
    assert field_choices(config.AugmentConfig, "color") == (*augment.COLOR_MODES, None)
    assert field_choices(config.ModelConfig, "init") == (*resnet_tricks.INIT_SCHEMES, None)
    assert data.SOURCE_KINDS is choices.SOURCE_KINDS and tune.SCHEDULERS is choices.SCHEDULERS
    assert set(choices.TRAIN_SET_SIZES) <= set(choices.SOURCE_KINDS)
    assert choices.TRAIN_SET_SIZES["digits"] == len(data.load_digits().train_labels)
