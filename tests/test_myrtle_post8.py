"""Myrtle.ai post 8 ("How to train your ResNet 8: Bag of tricks"; davidcpage/cifar10-fast bag_of_tricks.ipynb, cells
counted from 0): the final network (pool before BN, input patch whitening), the 10-epoch recipe's learning rates
and EMA, the trainer's whitening fit and EMA interval, and the ladder of the post's steps."""

from __future__ import annotations

import csv
import random

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from timm.utils import ModelEmaV3

import timm_tricks.models  # noqa: F401  (registers the models)
from timm_tricks.batches import Shard
from timm_tricks.build import build_batches, optimizer_from_config, schedule_from_config
from timm_tricks.choices import TRAIN_SET_SIZES, is_better
from timm_tricks.config import ConfigError, load_config
from timm_tricks.data import normalize, parse_source
from timm_tricks.ladder import load_ladder, plan_ladder
from timm_tricks.models.myrtle_resnet9 import MyrtleResNet9
from timm_tricks.schedule import TricksScheduler, lr_table
from timm_tricks.train import Trainer
from timm_tricks.whitening import PatchWhitening, fit_input_whitening, training_images, whitening_filter

EPS = 1e-2  # cell 72: whitening_block(..., eps=1e-2)


# ---------------------------------------------------------------------------------------------- the final network

def _order(model: torch.nn.Module, layer: str, x: torch.Tensor) -> list[str]:
    """The order in which the conv, pool, BN and act of ``layer`` run in a forward pass."""
    seen, hooks = [], []
    for name in ("conv", "pool", "bn", "act"):
        module = model.get_submodule(f"{layer}.{name}")
        hooks.append(module.register_forward_hook(lambda m, i, o, name=name: seen.append(name)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("kwargs, order", [
    ({}, ["conv", "pool", "bn", "act"]),  # cell 38: the default, post 8's final network
    (dict(pool_order="conv_bn_pool_act"), ["conv", "bn", "pool", "act"]),  # cell 35
    (dict(pool_order="conv_bn_act_pool"), ["conv", "bn", "act", "pool"]),  # posts 4-7, cell 26
])
def test_pooling_layers_run_in_the_given_order(kwargs, order):
    model = timm.create_model("resnet9_tricks", **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    for layer in ("layer1", "layer2", "layer3"):
        assert _order(model, layer, x) == order, layer
    for layer in ("prep", "layer1.residual.res1", "layer1.residual.res2", "layer3.residual.res2"):
        assert isinstance(model.get_submodule(f"{layer}.pool"), torch.nn.Identity)  # only layers 1-3 pool
    with pytest.raises(ValueError, match=r"'pool_first'.*conv_pool_bn_act"):
        timm.create_model("resnet9_tricks", pool_order="pool_first")


def test_final_network_by_hand():
    """whiten (3x3, fixed) -> 1x1 conv -> BN -> act; conv -> max pool -> BN -> act in layers 1-3; residuals
    x + res2(res1(x)); global max pool; bias-free linear x 1/16 (cells 63 and 72)."""
    torch.manual_seed(0)
    model = timm.create_model("resnet9_tricks", act="celu", celu_alpha=0.3, output_scale=1 / 16).eval()
    model.fit_whitening(torch.randn(8, 3, 32, 32))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.normal_()
    x = torch.randn(2, 3, 32, 32)

    def bn_act(layer, h):
        bn = layer.bn
        return F.celu(F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps), 0.3)

    def block(layer, h, pool=False):
        h = F.conv2d(h, layer.conv.weight, padding=1)
        return bn_act(layer, F.max_pool2d(h, 2) if pool else h)

    def res(layer, h):
        return h + block(layer.residual.res2, block(layer.residual.res1, h))

    with torch.no_grad():
        h = F.conv2d(F.conv2d(x, model.prep.whiten.weight, padding=1), model.prep.conv.weight)
        h = bn_act(model.prep, h)
        h = res(model.layer1, block(model.layer1, h, pool=True))
        h = block(model.layer2, h, pool=True)
        h = res(model.layer3, block(model.layer3, h, pool=True))
        expected = F.linear(h.amax(dim=(2, 3)), model.fc.weight) / 16
        torch.testing.assert_close(model(x), expected)


def test_unfitted_whitening_is_a_plain_3x3_conv():
    """Before fitting, whitening + the 1x1 conv compute the 3x3 conv whose weight is the 1x1 weight reshaped to
    (64, 3, 3, 3): the filter is the identity on the 27 patch pixels."""
    model = timm.create_model("resnet9_tricks")
    x = torch.randn(2, 3, 32, 32)
    w1 = model.prep.conv.weight  # (64, 27, 1, 1)
    with torch.no_grad():
        ours = model.prep.conv(model.prep.whiten(x))
        torch.testing.assert_close(ours, F.conv2d(x, w1.reshape(64, 3, 3, 3), padding=1))
    assert not model.prep.whiten.weight.requires_grad
    assert "prep.whiten.weight" in model.state_dict()
    assert "prep.whiten.weight" not in dict(model.named_parameters())  # a buffer: no optimizer, no weight decay
    # the same trainable parameters as posts 4-7's 3x3 prep: 27 x 64 = 3 x 3 x 3 x 64
    plain = timm.create_model("resnet9_tricks", whitening=False)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters())
    assert model.pretrained_cfg["first_conv"] == "prep.whiten" and plain.pretrained_cfg["first_conv"] == "prep.conv"
    with pytest.raises(ValueError, match="whitening=False"):
        plain.fit_whitening(x)


# ------------------------------------------------------------------------------------------------- patch whitening

def _patches(images: torch.Tensor) -> np.ndarray:
    """Every 3x3 window (stride 1, no padding) as a row in (channel, row, column) order, by slicing."""
    n, c, h, w = images.shape
    cols = [images[:, ch, dy:dy + h - 2, dx:dx + w - 2].reshape(-1) for ch in range(c) for dy in range(3)
            for dx in range(3)]
    return torch.stack(cols, dim=1).double().numpy()


def _second_moment(rows: np.ndarray) -> np.ndarray:
    """cifar10-fast ``cov`` (torch_backend.py): X^T X / (n - 1), not centred."""
    return rows.T @ rows / (len(rows) - 1)


def _correlated_images(seed: int, n: int = 48, size: int = 12) -> torch.Tensor:
    """Images whose neighbouring pixels and channels correlate (a blurred, channel-mixed noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size + 2, size + 2, generator=g)
    x = F.avg_pool2d(x, 3, stride=1)  # neighbours share 6 of 9 terms
    mix = torch.tensor([[1.0, 0.5, 0.2], [0.0, 1.0, 0.4], [0.3, 0.0, 1.0]])
    return torch.einsum("dc,nchw->ndhw", mix, x) * 2


def _whitened_moment(layer: PatchWhitening, images: torch.Tensor) -> np.ndarray:
    """The second moment of the layer's outputs at the positions whose 3x3 window lies inside the image."""
    with torch.no_grad():  # in float64, so that rounding stays far below the effect of eps
        out = layer.double()(images.double())[:, :, 1:-1, 1:-1]  # padding 1: these see exactly the valid windows
    rows = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1]).double().numpy()
    return _second_moment(rows)


def test_whitened_patches_have_diagonal_covariance_lambda_over_lambda_plus_eps():
    images = _correlated_images(0)
    layer = PatchWhitening(3, eps=EPS)
    layer.fit(images)
    lam = np.sort(np.linalg.eigvalsh(_second_moment(_patches(images))))[::-1]
    got = _whitened_moment(layer, images)
    # W S W^T with W = diag(1 / sqrt(lam + eps)) V^T is diag(lam / (lam + eps)), in decreasing lam
    np.testing.assert_allclose(got, np.diag(lam / (lam + EPS)), atol=1e-6)  # the filter is stored in float32
    # so it is the identity within eps / (lam_min + eps): the reference's regularisation and nothing else
    assert np.abs(got - np.eye(27)).max() <= EPS / (lam.min() + EPS) + 1e-6
    assert lam.min() < 0.2  # the test data do have directions where eps matters

    exact = PatchWhitening(3, eps=0.0)
    exact.fit(images)
    np.testing.assert_allclose(_whitened_moment(exact, images), np.eye(27), atol=1e-6)


def test_white_inputs_whiten_to_the_identity_within_about_eps():
    """Normalised, uncorrelated pixels (every eigenvalue near 1): the whitened covariance is I within
    eps / (lambda_min + eps), about eps."""
    images = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    layer = PatchWhitening(3, eps=EPS)
    layer.fit(images)
    lam_min = np.linalg.eigvalsh(_second_moment(_patches(images))).min()
    assert 0.9 < lam_min < 1.0  # a finite sample of white noise
    deviation = np.abs(_whitened_moment(layer, images) - np.eye(27)).max()
    assert deviation == pytest.approx(EPS / (lam_min + EPS), abs=1e-6) and deviation < 1.1 * EPS


def test_whitening_fit_is_deterministic_and_streams():
    images = _correlated_images(1)
    whole = whitening_filter(images)
    assert torch.equal(whole, whitening_filter(images.clone()))
    torch.testing.assert_close(whitening_filter(list(images.split(7))), whole, rtol=1e-10, atol=1e-12)
    rows = whole.reshape(27, 27)
    assert torch.all(rows.gather(1, rows.abs().argmax(1, keepdim=True)) > 0)  # each eigenvector's sign is fixed
    lengths = rows.norm(dim=1)  # |v_i| / sqrt(lam_i + eps) with |v_i| = 1: decreasing lam -> increasing length
    assert torch.all(lengths[1:] >= lengths[:-1] - 1e-12)
    with pytest.raises(ValueError, match="3 channels"):
        PatchWhitening(1).fit(images)


# --------------------------------------------------------------------------------------------- learning rates, EMA

def test_recipe_learning_rates_at_epochs_0_2_8_10():
    cfg = load_config("myrtle_resnet9")
    steps = TRAIN_SET_SIZES["cifar10"] // cfg.data.batch_size  # 50,000 // 512 = 97, the ragged tail dropped
    lr = {round(epoch, 6): value for _, epoch, value in lr_table(schedule_from_config(cfg, steps), cfg.scaled_lr())}
    assert lr[0.0] == 0.0  # cell 85: lr_schedule([0, epochs/5, epochs - ema_epochs], [0, 1.0, 0.1])
    assert lr[2.0] == pytest.approx(1.0)  # the peak at epochs / 5
    assert lr[5.0] == pytest.approx(1.0 + (0.1 - 1.0) * (5 - 2) / (8 - 2))  # linear in between: 0.55
    assert lr[8.0] == pytest.approx(0.1)  # epochs - ema_epochs = 8
    last_step = 10 * steps - 1
    assert lr[round(last_step / steps, 6)] == pytest.approx(0.1)  # held to the end of epoch 10
    assert cfg.augment.cutout == 0 and cfg.train.epochs == 10  # cells 84-85: no cutout at 10 epochs


def test_mean_loss_step_equals_the_reference_summed_loss_step():
    """cifar10-fast (cell 10 nesterov_update, cell 85): summed loss, lr_ref / B, weight decay 5e-4 x B equals torch's
    Nesterov SGD on the mean loss with the recipe's lr 1.0 and weight decay 5e-4; BN biases x64 and /64."""
    cfg = load_config("myrtle_resnet9")
    batch, momentum = cfg.data.batch_size, cfg.optim.momentum
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 5, generator=g), torch.randn(batch, generator=g)
    for lr_ref, wd_ref, lr, wd in ((1.0, 5e-4 * batch, cfg.optim.lr, cfg.optim.weight_decay),
                                   (64 * 1.0, 5e-4 * batch / 64, cfg.optim.lr * cfg.optim.bn_bias_lr_mult,
                                    cfg.optim.weight_decay * cfg.optim.bn_bias_wd_mult)):
        w_ref = torch.full((5,), 0.3, requires_grad=True)
        w = torch.full((5,), 0.3, requires_grad=True)
        v = torch.zeros(5)
        opt = torch.optim.SGD([w], lr=lr, momentum=momentum, weight_decay=wd, nesterov=True)
        for _ in range(3):
            (x @ w_ref - y).pow(2).sum().backward()  # summed loss
            with torch.no_grad():  # nesterov_update(w, dw, v, lr / B, weight_decay, momentum)
                dw = (w_ref.grad + wd_ref * w_ref) * -(lr_ref / batch)
                v.mul_(momentum).add_(dw)
                w_ref.add_(dw + momentum * v)
            w_ref.grad = None
            opt.zero_grad()
            (x @ w - y).pow(2).mean().backward()  # this project's mean loss
            opt.step()
        torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)


def test_recipe_bn_bias_groups_get_64x_lr_and_one_64th_weight_decay():
    cfg = load_config("myrtle_resnet9", ["model.kwargs.channels=[8, 16, 16, 32]"])
    model = timm.create_model(cfg.model.name, **cfg.model_kwargs(10))
    optimizer = optimizer_from_config(model, cfg)
    scheduler = TricksScheduler(optimizer, schedule_from_config(cfg, steps_per_epoch=97))
    scheduler.step_update(2 * 97)  # epoch 2: the peak
    groups = {g.get("lr_scale", 1.0): g for g in optimizer.param_groups}
    assert set(groups) == {1.0, 64.0}
    assert groups[1.0]["lr"] == pytest.approx(1.0) and groups[1.0]["weight_decay"] == pytest.approx(5e-4)
    assert groups[64.0]["lr"] == pytest.approx(64.0) and groups[64.0]["weight_decay"] == pytest.approx(5e-4 / 64)
    biases = {id(m.bias) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {id(p) for p in groups[64.0]["params"]} == biases


def test_ema_every_5_steps_decays_0_99_per_step():
    """cell 10 update_ema(momentum=0.99, update_freq=5): rho = 0.99 ** 5 every 5th step, i.e. 0.99 a step (an
    average over about 1 / (1 - 0.99) = 100 steps, about one epoch of 97: the post's "roughly the last epoch")."""
    ema_cfg = load_config("myrtle_resnet9").ema
    assert ema_cfg.every_steps == 5 and ema_cfg.decay_per_step == pytest.approx(0.99, abs=1e-12)
    model = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64)
    torch.nn.init.zeros_(model.weight)
    ema = ModelEmaV3(model, decay=ema_cfg.decay)
    with torch.no_grad():
        model.weight.fill_(1.0)  # a step change the EMA follows
    for step in range(1, 101):
        if step % ema_cfg.every_steps == 0:  # the trainer's rule
            ema.update(model, step=step)
    assert ema.module.weight.item() == pytest.approx(1 - 0.99 ** 100, abs=1e-9)


def test_best_metric_mode_and_validation():
    assert is_better("eval_top1", 90.0, 89.0) and not is_better("eval_top1", 89.0, 90.0)
    assert is_better("ema_eval_loss", 0.5, 0.6) and not is_better("eval_loss", 0.6, 0.5)
    assert is_better("eval_loss", 9.0, None) and not is_better("eval_top1", 90.0, 90.0)
    with pytest.raises(ConfigError, match="train.best_metric=ema_eval_top1 needs ema.enabled=true"):
        load_config("digits", ["train.best_metric=ema_eval_top1"])
    with pytest.raises(ConfigError, match="ema_eval_top5"):
        load_config("digits", ["train.best_metric=top1"])


# ------------------------------------------------------------------------------------------------------ the trainer

TINY = ["data.source=digits", "data.image_size=16", "data.batch_size=128", "train.epochs=1", "train.precision='no'",
        "model.kwargs.channels=[8, 16, 16, 32]", "model.kwargs.ghost_bn_splits=2", "eval.tta_flip=false",
        "train.keep_checkpoints=5"]


def test_trainer_fits_the_whitening_before_training_and_a_resume_does_not(tmp_path, monkeypatch):
    calls = []
    original = MyrtleResNet9.fit_whitening
    monkeypatch.setattr(MyrtleResNet9, "fit_whitening", lambda self, images: calls.append(1) or original(self, images))
    cfg = load_config("myrtle_resnet9", TINY)
    seen = {}

    def first_step(state):
        if state.global_step == 1:
            seen["filter"] = trainer.accelerator.unwrap_model(trainer.model).prep.whiten.weight.clone()

    trainer = Trainer(cfg, tmp_path / "run", step_callback=first_step)
    assert calls == [1]
    data = trainer.batches.data  # digits: 1,438 training images, all of them (fewer than the reference's 10,000)
    sigma = _second_moment(_patches(normalize(data.train_images, data.mean, data.std)))
    model = trainer.accelerator.unwrap_model(trainer.model)
    w = model.prep.whiten.weight.double().reshape(27, 27).numpy()
    # W = diag(lam + eps)^(-1/2) V^T, so W^T W = (Sigma + eps I)^(-1): unique even where eigenvalues repeat (the
    # grey digits' three equal channels leave 18 zero eigenvalues, whose eigenvectors any basis may span)
    np.testing.assert_allclose(w.T @ w, np.linalg.inv(sigma + EPS * np.eye(27)), rtol=1e-4, atol=1e-3)
    assert torch.equal(trainer.ema.module.prep.whiten.weight, model.prep.whiten.weight)  # the EMA copies it fitted
    trainer.fit()
    assert torch.equal(seen["filter"], model.prep.whiten.weight)  # in place at step 1, and never trained

    resumed = Trainer(load_config("myrtle_resnet9", [*TINY, "train.epochs=2"]), tmp_path / "run", resume=True)
    assert calls == [1]  # the checkpoint holds the filter: no refit
    resumed.fit()
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "model.safetensors"))["prep.whiten.weight"]
    assert torch.equal(saved, model.prep.whiten.weight)


def test_trainer_ema_interval_summary_columns_and_best_metric(tmp_path, monkeypatch):
    steps = []
    original = ModelEmaV3.update
    monkeypatch.setattr(ModelEmaV3, "update", lambda self, m, step=None: steps.append(step) or original(self, m, step))
    cfg = load_config("myrtle_resnet9", [*TINY, "train.epochs=2", "model.kwargs.whitening=false",
                                         "train.best_metric=ema_eval_loss"])
    Trainer(cfg, tmp_path / "run").fit()
    assert steps == [5, 10, 15, 20]  # 1,438 // 128 = 11 steps an epoch, 22 in all; every 5th
    rows = list(csv.DictReader(open(tmp_path / "run" / "summary.csv")))
    assert list(rows[0])[-3:] == ["ema_eval_loss", "ema_eval_top1", "ema_eval_top5"]
    best = min(range(2), key=lambda e: float(rows[e]["ema_eval_loss"]))  # a loss: lower is better
    assert (tmp_path / "run" / "checkpoints" / "best.txt").read_text() == f"ckpt-{11 * (best + 1):09d}"


def test_file_data_sets_give_the_same_whitening_images_every_time(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    cfg = load_config(None, [f"data.source=folder:{tmp_path}", "data.image_size=16", "data.batch_size=2",
                             "data.workers=0", "model.name=resnet9_tricks", "augment.pca_std=0.0"])
    batches = build_batches(cfg, parse_source(cfg.data.source), lambda n: Shard(n, 2, 0, 1, 0), torch.device("cpu"))
    first, second = torch.cat(list(training_images(batches))), torch.cat(list(training_images(batches)))
    assert first.shape == (6, 3, 16, 16) and torch.equal(first, second)  # seeded per index: every process alike
    model = timm.create_model("resnet9_tricks", num_classes=2)
    random.seed(5)
    torch.manual_seed(5)
    before = random.random(), torch.rand(1)
    random.seed(5)
    torch.manual_seed(5)
    assert fit_input_whitening(model, batches)
    assert (random.random(), torch.rand(1)) == before  # the global random state is left alone
    torch.testing.assert_close(model.prep.whiten.weight, whitening_filter(first).float())
    assert not fit_input_whitening(timm.create_model("resnet9_tricks", whitening=False), batches)


# -------------------------------------------------------------------------------------------------------- the ladder

def test_ladder_follows_the_posts_steps():
    ladder = load_ladder("myrtle_resnet9")
    assert [r.name for r in ladder.rungs] == [
        "baseline", "+ max pool before BN", "+ label smoothing", "+ CELU", "+ ghost BN", "+ frozen BN scales",
        "+ input patch whitening", "+ EMA", "+ flip TTA, no cutout"]
    assert [r.paper for r in ladder.rungs] == [94.1] * 9  # each step's time is for 94.1% test accuracy
    assert [r.paper_seconds for r in ladder.rungs] == [70, 64, 59, 52, 46, 43, 36, 33.5, 26]  # the section titles
    plan = {p.rung.name: p.config for p in plan_ladder(ladder)}
    epochs = [c.train.epochs for c in plan.values()]
    assert epochs == [24, 25, 23, 20, 18, 17, 14, 13, 10]
    for name, c in plan.items():
        knots = c.schedule.knots
        assert c.schedule.reference_epochs == c.train.epochs and knots[-1][0] == c.train.epochs
        # warmup to the peak: 5 epochs in the baseline (cell 27), epochs / 5 from label smoothing on (cell 45)
        assert knots[1] == [5 if name in ("baseline", "+ max pool before BN") else c.train.epochs / 5, 1.0]
        if c.ema.enabled:  # cell 78: 0.1 from epochs - ema_epochs (2) on
            assert knots[2:] == [[c.train.epochs - 2, 0.1], [c.train.epochs, 0.1]]
        else:
            assert knots[2:] == [[c.train.epochs, 0.0]]
    base, final = plan["baseline"], plan["+ flip TTA, no cutout"]
    assert base.model.kwargs["pool_order"] == "conv_bn_act_pool" and base.model.kwargs["whitening"] is False
    assert (base.optim.lr, base.augment.cutout, base.loss.label_smoothing) == (0.4, 8, 0.0)
    assert final == load_config("myrtle_resnet9")  # the last rung is the shipped recipe
    assert [c.optim.lr for c in plan.values()] == [0.4] * 4 + [0.6] * 2 + [1.0] * 3  # cells 27, 58, 75
