"""timm's model contract, checked for every registered ``*_tricks`` model.

timm holds each of its models to a common interface (its ``tests/test_models.py``): forward and backward; a
pretrained cfg whose ``first_conv``, ``classifier`` and ``pool_size`` match the model; ``forward_features`` /
``forward_head`` and ``reset_classifier``, with and without global pooling; ``features_only`` and
``forward_intermediates`` taps that agree with ``feature_info``; gradient checkpointing; TorchScript; FX tracing
(forward, backward, and scripted). The checks below state those requirements in this project's terms, over
``timm.list_models('*_tricks')`` plus the ResNet-9 of the Myrtle recipe (ghost BN, CELU, frozen BN scales) and of
posts 4-7 (no input whitening, pool last).

Inputs are small (at most 64 x 64) so that everything runs on a CPU. By default only ResNet-9 (as registered and as in
the recipe) and a narrow Wider ResNet-38-A2 run; the other registered models take seconds each to build, trace or
script, and are marked slow.
"""

import math

import pytest
import timm
import torch
from timm.models import FeatureInfo, create_feature_extractor, get_graph_node_names

import timm_tricks.models  # noqa: F401 - registers the models

ALL_NAMES = timm.list_models('*_tricks')
FAST = {'resnet9_tricks'}  # the others take seconds each to build, run, trace or script
# Wider ResNet-38-A2's code paths (max pools, strided stages, Dropout2d) at a width that builds fast
TINY_WIDER = dict(layers=(1, 1, 1, 1, 1, 1), stem_width=8,
                  widths=((8, 8), (16, 16), (16, 16), (16, 32), (16, 32, 64), (32, 64, 128)))
CASES = [
    pytest.param(name, {}, id=name, marks=() if name in FAST else pytest.mark.slow) for name in ALL_NAMES
] + [
    pytest.param('resnet9_tricks', dict(ghost_bn_splits=2, act='celu', bn_weight_frozen=True),
                 id='resnet9_tricks-recipe'),
    pytest.param('resnet9_tricks', dict(whitening=False, pool_order='conv_bn_act_pool'), id='resnet9_tricks-posts4to7'),
    pytest.param('wider_resnet38_a2_tricks', TINY_WIDER, id='wider_resnet38_a2_tricks-tiny'),
]
CFG_KEYS = {'url', 'num_classes', 'input_size', 'pool_size', 'crop_pct', 'interpolation', 'mean', 'std',
            'first_conv', 'classifier'}
MAX_SIZE = 64


def _create(name: str, kwargs: dict, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs, **extra)


def _input(name: str, batch: int = 1) -> torch.Tensor:
    """Square images at the model's cfg size, capped at ``MAX_SIZE`` (every reduction divides it)."""
    size = min(MAX_SIZE, *timm.models.get_pretrained_cfg(name).input_size[1:])
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _names(value) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _check_taps(outputs, channels, reductions, x):
    assert len(outputs) == len(channels) == len(reductions)
    size = x.shape[-1]
    for out, chs, red in zip(outputs, channels, reductions, strict=True):
        assert out.shape == (x.shape[0], chs, size // red, size // red)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize('name, kwargs', CASES)
def test_forward_backward(name, kwargs):
    model = _create(name, kwargs, num_classes=5).train()
    out = model(_input(name, batch=2))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()
    out.mean().backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, pname
            assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize('name, kwargs', CASES)
def test_default_cfg_and_head(name, kwargs):
    model = _create(name, kwargs).eval()
    cfg = model.pretrained_cfg
    assert CFG_KEYS <= set(cfg), CFG_KEYS - set(cfg)
    state = model.state_dict()
    for key in _names(cfg['first_conv']) + _names(cfg['classifier']):
        assert f'{key}.weight' in state, key
    assert model.num_classes == cfg['num_classes'] > 0
    assert model.num_features > 0 and model.head_hidden_size > 0
    reduction = model.feature_info[-1]['reduction']
    # the cfg's pool_size is the final feature map at the cfg's input size (checked by a forward pass below)
    assert tuple(cfg['pool_size']) == tuple(math.ceil(s / reduction) for s in cfg['input_size'][1:])

    x = _input(name, batch=2)
    with torch.no_grad():
        feats = model.forward_features(x)  # always unpooled
        assert feats.shape == (2, model.num_features, x.shape[2] // reduction, x.shape[3] // reduction)
        logits = model(x)
        assert logits.shape == (2, model.num_classes)
        torch.testing.assert_close(model.forward_head(feats), logits)
        pre_logits = model.forward_head(feats, pre_logits=True)
        assert pre_logits.shape == (2, model.head_hidden_size)

        model.reset_classifier(0)  # no classifier: forward returns the pooled features
        assert model.num_classes == 0
        torch.testing.assert_close(model(x), pre_logits)

        model.reset_classifier(0, '')  # neither classifier nor pooling: the unpooled features
        torch.testing.assert_close(model(x), feats)

        headless = _create(name, kwargs, num_classes=0, global_pool='').eval()
        assert headless(x).shape == feats.shape


@pytest.mark.parametrize('name, kwargs', [
    pytest.param(*case.values, id=case.id, marks=() if case.values[0] == 'resnet9_tricks' else pytest.mark.slow)
    for case in CASES
])
def test_pool_size_at_cfg_input_size(name, kwargs):
    model = _create(name, kwargs).eval()
    cfg = model.pretrained_cfg
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, *cfg['input_size']))
    assert feats.shape == (1, model.num_features, *cfg['pool_size'])


@pytest.mark.parametrize('name, kwargs', CASES)
def test_features_only(name, kwargs):
    x = _input(name)
    taps = {}
    for feature_cls in ('default', 'getter'):  # the model's feature wrapper, and one over forward_intermediates
        extra = {} if feature_cls == 'default' else dict(feature_cls=feature_cls)
        model = _create(name, kwargs, features_only=True, **extra).eval()
        channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
        assert len(channels) >= 3
        with torch.no_grad():
            taps[feature_cls] = model(x)
        _check_taps(taps[feature_cls], channels, reductions, x)
    for default, getter in zip(taps['default'], taps['getter'], strict=True):
        torch.testing.assert_close(getter, default)


@pytest.mark.parametrize('name, kwargs', CASES)
def test_forward_intermediates_and_grad_checkpointing(name, kwargs):
    model = _create(name, kwargs).eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    x = _input(name)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
        final, taps = model.forward_intermediates(x)
        torch.testing.assert_close(final, feats)
        _check_taps(taps, info.channels(), info.reduction(), x)

        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert len(last_two) == 2
        for got, want in zip(last_two, taps[-2:], strict=True):
            torch.testing.assert_close(got, want)
        _, (second,) = model.forward_intermediates(x, indices=[1], stop_early=True)
        torch.testing.assert_close(second, taps[1])

        model.set_grad_checkpointing(True)
        torch.testing.assert_close(model(x), logits)
        final_ckpt, taps_ckpt = model.forward_intermediates(x)
        torch.testing.assert_close(final_ckpt, final)
        for got, want in zip(taps_ckpt, taps, strict=True):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize('name, kwargs', CASES)
def test_torchscript(name, kwargs):
    with timm.set_scriptable(True):
        model = _create(name, kwargs).eval()
    scripted = torch.jit.script(model)
    x = _input(name)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.parametrize('name, kwargs', CASES)
def test_fx_forward_backward_and_torchscript(name, kwargs):
    model = _create(name, kwargs, num_classes=5).eval()
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert train_nodes[-1] == eval_nodes[-1]  # the logits, in both modes
    traced = create_feature_extractor(model, return_nodes={eval_nodes[-1]: 'logits'})
    x = _input(name)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(traced(x)['logits'], ref)
        scripted = torch.jit.script(traced)
        torch.testing.assert_close(scripted(x)['logits'], ref)

    traced.train()  # last: a training step moves the BN statistics
    out = traced(_input(name, batch=2))['logits']
    assert out.shape == (2, 5)
    out.mean().backward()
    for pname, p in traced.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, pname

    # timm's FX feature wrapper taps the modules of feature_info
    fx_features = _create(name, kwargs, features_only=True, feature_cls='fx').eval()
    with torch.no_grad():
        taps = fx_features(x)
    _check_taps(taps, fx_features.feature_info.channels(), fx_features.feature_info.reduction(), x)
