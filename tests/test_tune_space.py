"""Search spaces: the shipped ones load, and bad spaces are rejected by name."""

import re

import pytest
from ray import tune

from timm_tricks.config import ConfigError, load_config
from timm_tricks.tune_space import list_spaces, load_space

SHIPPED = {"bag_of_tricks", "myrtle_resnet9", "xception", "wider_resnet", "digits"}


def test_shipped_spaces_load_and_convert():
    assert SHIPPED <= set(list_spaces())
    for name in list_spaces():
        space = load_space(name)
        # the Myrtle space ranks by the EMA weights, the model post 8 reports
        assert space.metric == ("ema_eval_top1" if name == "myrtle_resnet9" else "eval_top1")
        assert space.mode == "max" and space.recipe
        converted = space.to_tune()
        assert set(converted) == set(space.keys())
    bot = load_space("bag_of_tricks")
    assert set(bot.keys()) == {"optim.lr", "schedule.warmup_epochs", "loss.label_smoothing", "mixup.alpha"}
    t = bot.to_tune()
    assert isinstance(t["optim.lr"], tune.search.sample.Float) and t["optim.lr"].lower == 0.025
    assert isinstance(t["schedule.warmup_epochs"], tune.search.sample.Integer)


def test_sampled_values_become_a_valid_config():
    cfg = load_config("digits", {"optim.lr": 0.3, "schedule.warmup_epochs": 2, "mixup.alpha": 0.2})
    assert (cfg.optim.lr, cfg.schedule.warmup_epochs, cfg.mixup.alpha) == (0.3, 2.0, 0.2)
    assert cfg.model.name == "resnet18d_tricks"  # the rest of the recipe stays


@pytest.mark.parametrize("body, message", [
    ("space:\n  optim.lrr: {uniform: [0.1, 0.2]}\n", "unknown config key 'optim.lrr'; did you mean 'optim.lr'"),
    ("space:\n  optim.lr: {gaussian: [0.1, 0.2]}\n", "unknown distribution for optim.lr 'gaussian'"),
    ("space:\n  optim.lr: {uniform: [0.2, 0.1]}\n", "low < high"),
    ("space:\n  optim.lr: {loguniform: [0, 0.1]}\n", "low > 0"),
    ("space:\n  optim.lr: {uniform: [0.0, 0.1]}\n", "optim.lr=0.0 is out of range: must be > 0.0"),
    ("space:\n  loss.label_smoothing: {uniform: [0.0, 1.2]}\n", "must be < 1.0"),
    ("space:\n  train.epochs: {randint: [1.5, 3]}\n", "whole-number bounds"),
    ("space:\n  schedule.name: {choice: [cosine, cosin]}\n", "schedule.name='cosin' is not a valid choice"),
    ("space:\n  optim.lr: [0.1, 0.2]\n", "must map to one distribution"),
    ("space:\n  optim.lr: {quniform: [0.1, 0.5]}\n", "[low, high, q]"),
    ("metric: top1\nspace:\n  optim.lr: {uniform: [0.1, 0.2]}\n", "metric='top1' is not a valid choice"),
    ("recipe: digits\n", "needs a 'space:' mapping"),
    ("space:\n  optim.lr: {uniform: [0.1, 0.2]}\nsampler: tpe\n", "unknown search space entry 'sampler'"),
])
def test_bad_spaces_are_named(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_space(path)
    assert "bad.yaml" in str(err.value)


def test_unknown_space_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="unknown search space 'digit'; did you mean 'digits'"):
        load_space("digit")
