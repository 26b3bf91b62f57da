"""Tests of the registered timm variants in timm_tricks.models.

Small inputs keep this fast on CPU: 64 x 64 for the ImageNet models, 32 x 32 for ResNet-9, batch 2.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, BlurPool2d, convert_sync_batchnorm
from timm.models.xception_aligned import SeparableConv2d

import timm_tricks.models
from timm_tricks.models import (
    GhostBatchNorm2d,
    IdentityResidualBlock,
    ghost_batch_norm,
    stage_plan,
)

RESNETS = [
    'resnet18d_tricks', 'resnet34d_tricks', 'resnet50a_tricks', 'resnet50b_tricks', 'resnet50c_tricks',
    'resnet50d_tricks', 'resnet101d_tricks', 'resnet152d_tricks',
]
WIDER = ['wider_resnet16_tricks', 'wider_resnet20_tricks', 'wider_resnet38_tricks', 'wider_resnet38_a2_tricks']
XCEPTIONS = ['xception41_tricks', 'xception65_tricks', 'xception71_tricks']
ALL_NAMES = RESNETS + WIDER + XCEPTIONS + ['resnet9_tricks']
OUR_MODULES = {'resnet_tricks', 'wider_resnet', 'xception_tricks', 'myrtle_resnet9'}
CFG_KEYS = {'url', 'num_classes', 'input_size', 'pool_size', 'crop_pct', 'interpolation', 'mean', 'std',
            'first_conv', 'classifier'}
NUM_FEATURES = {
    **{n: 2048 for n in RESNETS}, 'resnet18d_tricks': 512, 'resnet34d_tricks': 512,
    **{n: 4096 for n in WIDER}, **{n: 2048 for n in XCEPTIONS}, 'resnet9_tricks': 512,
}


# ---------------------------------------------------------------- helpers

def _input(name: str, batch: int = 2) -> torch.Tensor:
    size = 32 if name == 'resnet9_tricks' else 64
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _bn_modules(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _last_bn_names(model: nn.Module) -> set[str]:
    """Names of the last BN of every residual branch (bn3 in bottlenecks, bn2 in basic blocks)."""
    out = set()
    for name, m in model.named_modules():
        if isinstance(m, timm.models.resnet.Bottleneck):
            out.add(f'{name}.bn3')
        elif isinstance(m, timm.models.resnet.BasicBlock):
            out.add(f'{name}.bn2')
    return out


# ---------------------------------------------------------------- registry

def test_all_names_registered_by_our_modules():
    assert set(timm.list_models('*_tricks')) == set(ALL_NAMES)
    registry = timm.models._registry._model_to_module
    for name in ALL_NAMES:
        assert registry[name] in OUR_MODULES, name
        assert timm.models.get_pretrained_cfg(name).architecture == name


def test_fresh_import_has_no_overwrites_and_no_timm_names():
    code = textwrap.dedent('''
        import json, warnings
        warnings.simplefilter('always')
        with warnings.catch_warnings(record=True) as caught:
            import timm
            timm_names = set(timm.list_models())
            timm_modules = set(timm.list_modules())
            import timm_tricks.models
            import timm_tricks.models  # noqa: F811 - a second import must be a no-op
        ours = timm.list_models('*_tricks')
        print(json.dumps(dict(
            warnings=[str(w.message) for w in caught],
            ours=ours,
            timm_tricks_names=sorted(n for n in timm_names if n.endswith('_tricks')),
            shadowed=sorted(set(ours) & timm_names),
            module_clash=sorted(timm_modules & set(OUR_MODULES)),
        )))
    ''').replace('OUR_MODULES', repr(sorted(OUR_MODULES)))
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, check=True)
    assert 'Overwriting' not in proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not [w for w in result['warnings'] if 'Overwriting' in w]
    assert sorted(result['ours']) == sorted(ALL_NAMES)
    assert result['timm_tricks_names'] == []
    assert result['shadowed'] == []
    assert result['module_clash'] == []


# ---------------------------------------------------------------- every model

def _grad_kwargs(name: str) -> dict:
    # zero gamma zeroes the gradients behind every last BN (checked exactly in test_zero_gamma_gradients)
    return dict(zero_gamma=False) if name in RESNETS else {}


@pytest.mark.parametrize('name', ALL_NAMES)
def test_model_interface(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7, pretrained=False, **_grad_kwargs(name))
    x = _input(name)

    # pretrained cfg: present, local-only, pointing at real modules
    cfg = model.pretrained_cfg
    assert CFG_KEYS <= set(cfg), CFG_KEYS - set(cfg)
    assert cfg['url'] == '' and not cfg.get('hf_hub_id')
    assert isinstance(model.get_submodule(cfg['first_conv']), nn.Conv2d)
    assert model.get_submodule(cfg['first_conv']).in_channels == 3
    assert model.get_submodule(cfg['classifier']) is model.get_classifier()
    assert model.get_classifier().out_features == 7

    # train-mode forward + backward: every trainable parameter gets a finite, non-zero gradient
    model.train()
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, pname
            assert torch.isfinite(p.grad).all(), pname
            assert p.grad.abs().sum() > 0, pname

    # eval: forward == forward_head(forward_features)
    model.eval()
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
        assert torch.equal(model.forward_head(feats), out)
        pooled = model.forward_head(feats, pre_logits=True)
        assert model.num_features == model.head_hidden_size == NUM_FEATURES[name]
        assert pooled.shape == (2, NUM_FEATURES[name])

        model.reset_classifier(3)
        assert model(x).shape == (2, 3)
        model.reset_classifier(0)
        no_head = model(x)
        assert no_head.shape == (2, NUM_FEATURES[name])
        torch.testing.assert_close(no_head, pooled)


@pytest.mark.parametrize('name', ['resnet18d_tricks', 'wider_resnet16_tricks', 'xception41_tricks', 'resnet9_tricks'])
def test_pretrained_local_file_loads_over_init(name, tmp_path):
    torch.manual_seed(1)
    src = timm.create_model(name, num_classes=5)
    path = tmp_path / 'weights.pth'
    torch.save(src.state_dict(), path)
    kwargs = dict(init='xavier') if name in RESNETS else {}
    torch.manual_seed(2)
    loaded = timm.create_model(
        name, pretrained=True, num_classes=5, pretrained_cfg_overlay=dict(file=str(path), num_classes=5), **kwargs)
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.parametrize('name', ['resnet18d_tricks', 'resnet9_tricks', 'wider_resnet16_tricks'])
def test_group_matcher_covers_all_parameters(name):
    model = timm.create_model(name, num_classes=4)
    groups = timm.models.group_parameters(model, model.group_matcher())
    grouped = [p for params in groups.values() for p in params]
    assert sorted(grouped) == sorted(n for n, _ in model.named_parameters())


@pytest.mark.parametrize('name', ['resnet9_tricks', 'wider_resnet16_tricks'])
def test_grad_checkpointing_matches(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    ref.sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], msg=n)


# ---------------------------------------------------------------- Bag of Tricks ResNets

def test_resnet_a_b_stride_position():
    a = timm.create_model('resnet50a_tricks')
    b = timm.create_model('resnet50b_tricks')
    for layer in ('layer2', 'layer3', 'layer4'):
        blk_a, blk_b = getattr(a, layer)[0], getattr(b, layer)[0]
        assert blk_a.conv1.stride == (2, 2) and blk_a.conv2.stride == (1, 1)
        assert blk_b.conv1.stride == (1, 1) and blk_b.conv2.stride == (2, 2)
        assert blk_a.conv1.kernel_size == (1, 1) and blk_a.conv2.kernel_size == (3, 3)
        for blk in (blk_a, blk_b):
            down = blk.downsample[0]
            assert isinstance(down, nn.Conv2d) and down.kernel_size == (1, 1) and down.stride == (2, 2)
        for blk in getattr(a, layer)[1:]:
            assert blk.conv1.stride == (1, 1) and blk.conv2.stride == (1, 1)
    for model in (a, b):
        assert isinstance(model.conv1, nn.Conv2d) and model.conv1.kernel_size == (7, 7)
    x = _input('resnet50a_tricks')
    with torch.no_grad():
        assert a.eval().forward_features(x).shape == b.eval().forward_features(x).shape == (2, 2048, 2, 2)


def test_resnet_c_deep_stem_and_d_avg_down():
    c = timm.create_model('resnet50c_tricks')
    d = timm.create_model('resnet50d_tricks')
    for model in (c, d):
        convs = [m for m in model.conv1 if isinstance(m, nn.Conv2d)]
        assert isinstance(model.conv1, nn.Sequential) and len(convs) == 3
        assert [m.out_channels for m in convs] == [32, 32, 64]
        assert [m.kernel_size for m in convs] == [(3, 3)] * 3
        assert [m.stride for m in convs] == [(2, 2), (1, 1), (1, 1)]
    for layer in ('layer2', 'layer3', 'layer4'):
        down_c = getattr(c, layer)[0].downsample
        assert isinstance(down_c[0], nn.Conv2d) and down_c[0].kernel_size == (1, 1) and down_c[0].stride == (2, 2)
        down_d = getattr(d, layer)[0].downsample
        assert isinstance(down_d[0], nn.AvgPool2d)
        assert down_d[0].kernel_size == 2 and down_d[0].stride == 2
        assert isinstance(down_d[1], nn.Conv2d) and down_d[1].kernel_size == (1, 1) and down_d[1].stride == (1, 1)
        assert getattr(d, layer)[0].conv2.stride == (2, 2)  # D keeps B's stride position


def test_resnet18d_basic_blocks():
    model = timm.create_model('resnet18d_tricks')
    assert [len(getattr(model, f'layer{i}')) for i in range(1, 5)] == [2, 2, 2, 2]
    assert all(isinstance(b, timm.models.resnet.BasicBlock) for i in range(1, 5) for b in getattr(model, f'layer{i}'))
    assert isinstance(model.layer2[0].downsample[0], nn.AvgPool2d)


def test_resnet_depths():
    expected = {'resnet34d_tricks': [3, 4, 6, 3], 'resnet101d_tricks': [3, 4, 23, 3],
                'resnet152d_tricks': [3, 8, 36, 3]}
    for name, depths in expected.items():
        model = timm.create_model(name, device='meta')  # structure only: no memory, no init cost
        assert [len(getattr(model, f'layer{i}')) for i in range(1, 5)] == depths


@pytest.mark.parametrize('ours, theirs', [
    ('resnet50b_tricks', 'resnet50'), ('resnet50c_tricks', 'resnet50c'), ('resnet50d_tricks', 'resnet50d'),
    ('resnet18d_tricks', 'resnet18d'),
])
def test_resnet_matches_timm_reference(ours, theirs):
    """Same parameters and, with timm's weights loaded, the same outputs as timm's own variant."""
    torch.manual_seed(0)
    ref = timm.create_model(theirs).eval()
    model = timm.create_model(ours).eval()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    model.load_state_dict(ref.state_dict(), strict=True)
    x = _input(ours)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


def test_resnet50a_same_shapes_as_resnet50_but_other_function():
    torch.manual_seed(0)
    ref = timm.create_model('resnet50', zero_init_last=False).eval()
    model = timm.create_model('resnet50a_tricks').eval()
    assert sum(p.numel() for p in model.parameters()) == 25_557_032 == sum(p.numel() for p in ref.parameters())
    model.load_state_dict(ref.state_dict(), strict=True)
    x = _input('resnet50a_tricks')
    with torch.no_grad():
        out_a, out_ref = model(x), ref(x)
    assert out_a.shape == out_ref.shape and not torch.allclose(out_a, out_ref)


@pytest.mark.parametrize('name', ['resnet50d_tricks', 'resnet18d_tricks'])
@pytest.mark.parametrize('init', ['kaiming', 'xavier'])
def test_zero_gamma(name, init):
    model = timm.create_model(name, init=init)
    last = _last_bn_names(model)
    assert len(last) == (16 if name == 'resnet50d_tricks' else 8)
    for bn_name, bn in _bn_modules(model):
        expected = 0.0 if bn_name in last else 1.0
        assert torch.all(bn.weight == expected), bn_name
        assert torch.all(bn.bias == 0), bn_name
    off = timm.create_model(name, init=init, zero_gamma=False)
    assert all(torch.all(bn.weight == 1.0) for _, bn in _bn_modules(off))


def test_zero_gamma_gradients():
    """With gamma 0 the last BN passes no gradient: every parameter behind it gets an exactly zero gradient."""
    torch.manual_seed(0)
    model = timm.create_model('resnet18d_tricks', num_classes=7).train()
    model(_input('resnet18d_tricks')).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        behind_last_bn = '.conv1.' in name or '.bn1.' in name or '.conv2.' in name
        if name.startswith('layer') and behind_last_bn:
            assert torch.all(p.grad == 0), name
        else:
            assert p.grad.abs().sum() > 0, name  # bn2 gamma / beta, shortcut, stem and fc still learn


def test_xavier_init():
    model = timm.create_model('resnet50d_tricks', init='xavier')
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight
            receptive = w[0][0].numel() if w.dim() > 2 else 1
            fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
            assert w.abs().max() <= math.sqrt(6.0 / (fan_in + fan_out)) * (1 + 1e-6), name  # float32 rounding
    big = model.layer4[0].conv2.weight  # 512 x 512 x 3 x 3
    fan = 512 * 9 + 512 * 9
    assert abs(big.var().item() / (2.0 / fan) - 1.0) < 0.1
    assert torch.all(model.fc.bias == 0)
    fc_fan = 2048 + 1000
    assert abs(model.fc.weight.var().item() / (2.0 / fc_fan) - 1.0) < 0.1


def test_kaiming_init_is_timm_default():
    model = timm.create_model('resnet50d_tricks')
    big = model.layer4[0].conv2.weight
    assert abs(big.var().item() / (2.0 / (512 * 9)) - 1.0) < 0.1  # kaiming normal, fan_out
    assert model.init_scheme == 'kaiming' and model.zero_gamma is True


def test_resnet_bad_arguments():
    with pytest.raises(ValueError, match=r"'he'.*kaiming, xavier"):
        timm.create_model('resnet50d_tricks', init='he')
    with pytest.raises(ValueError, match='zero_gamma'):
        timm.create_model('resnet18d_tricks', zero_gamma=True, zero_init_last=False)
    with pytest.raises(ValueError, match=r'output_stride=12.*8, 16, 32'):
        timm.create_model('resnet18d_tricks', output_stride=12)
    with pytest.raises(ValueError, match='aa_layer'):
        timm.create_model('resnet50a_tricks', aa_layer=BlurPool2d)


def test_resnet_accepts_timm_kwargs():
    model = timm.create_model('resnet50a_tricks', output_stride=16, drop_path_rate=0.1, zero_init_last=False,
                              global_pool='max')
    assert model.zero_gamma is False
    assert model.layer4[0].conv1.stride == (1, 1) and model.layer4[0].conv2.dilation == (1, 1)
    assert model.layer4[1].conv2.dilation == (2, 2)
    with torch.no_grad():
        assert model.eval().forward_features(_input('resnet50a_tricks')).shape == (2, 2048, 4, 4)


# ---------------------------------------------------------------- Wider ResNet

WIDTHS = [(128, 128), (256, 256), (512, 512), (512, 1024), (512, 1024, 2048), (1024, 2048, 4096)]
DEPTHS = {'wider_resnet16_tricks': [1] * 6, 'wider_resnet20_tricks': [1, 1, 1, 3, 1, 1],
          'wider_resnet38_tricks': [3, 3, 6, 3, 1, 1], 'wider_resnet38_a2_tricks': [3, 3, 6, 3, 1, 1]}


def _block_widths(block: IdentityResidualBlock) -> tuple[int, ...]:
    return tuple(m.out_channels for n, m in block.convs.named_children() if n.startswith('conv'))


@pytest.mark.parametrize('name', WIDER)
def test_wider_resnet_structure(name):
    model = timm.create_model(name, device='meta')  # structure only
    assert isinstance(model.stem, nn.Conv2d)
    assert (model.stem.in_channels, model.stem.out_channels) == (3, 64)
    assert model.stem.kernel_size == (3, 3) and model.stem.stride == (1, 1)
    assert len(model.stages) == 6
    assert [len(s.blocks) for s in model.stages] == DEPTHS[name]
    for stage, widths in zip(model.stages, WIDTHS, strict=True):
        assert all(_block_widths(b) == widths for b in stage.blocks)
    pools = [hasattr(s, 'pool') for s in model.stages]
    if name.endswith('a2_tricks'):
        assert pools == [True, True, False, False, False, False]
    else:
        assert pools == [True, True, True, True, True, False]
    for s in model.stages:
        if hasattr(s, 'pool'):
            assert isinstance(s.pool, nn.MaxPool2d)
            assert (s.pool.kernel_size, s.pool.stride, s.pool.padding) == (3, 2, 1)
    assert isinstance(model.norm, BatchNormAct2d) and model.norm.num_features == 4096
    assert model.head.fc.in_features == 4096


def test_wider_resnet_norm_act_defaults():
    model = timm.create_model('wider_resnet16_tricks')
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 6 * 2 + 2 + 1  # bn1 + bn2 per block, bn3 in the two bottlenecks, final norm
    for m in norms:
        assert isinstance(m, BatchNormAct2d)
        assert m.eps == 1e-5 and m.momentum == 0.1
        assert isinstance(m.act, nn.LeakyReLU) and m.act.negative_slope == 0.01
    synced = convert_sync_batchnorm(model)
    assert isinstance(synced.norm, nn.SyncBatchNorm) and isinstance(synced.norm.act, nn.LeakyReLU)
    relu = timm.create_model('wider_resnet16_tricks', act_layer='relu')
    assert isinstance(relu.norm.act, nn.ReLU)


def test_wider_resnet_kaiming_fan_out():
    model = timm.create_model('wider_resnet16_tricks')
    w = model.stages[5].blocks[0].convs.conv2.weight  # 2048 x 1024 x 3 x 3
    assert abs(w.var().item() / (2.0 / (2048 * 9)) - 1.0) < 0.1


def test_wider_resnet_xavier_init_matches_inplace_abn():
    # inplace_abn scripts/train_imagenet.py init_weights: convs xavier_normal_(w, gain of the activation),
    # Linear xavier_uniform_(w, 0.1), biases 0, BN 1 / 0.
    model = timm.create_model('wider_resnet16_tricks', init='xavier')
    assert model.init_scheme == 'xavier'
    gain = math.sqrt(2.0 / (1 + 0.01 ** 2))  # calculate_gain('leaky_relu', 0.01)
    assert model.init_gain == pytest.approx(gain)
    checked = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.weight.numel() >= 100_000:
            receptive = m.kernel_size[0] * m.kernel_size[1]
            fan_in, fan_out = m.in_channels * receptive, m.out_channels * receptive
            std = gain * math.sqrt(2.0 / (fan_in + fan_out))
            assert abs(m.weight.std().item() / std - 1) < 0.02, name
            assert abs(m.weight.mean().item()) < 0.01 * std, name
            checked += 1
    assert checked >= 10
    fc = model.get_classifier()  # 1000 x 4096
    bound = 0.1 * math.sqrt(6.0 / (4096 + 1000))
    assert fc.weight.abs().max().item() <= bound * (1 + 1e-6)
    assert abs(fc.weight.var().item() / (bound ** 2 / 3) - 1) < 0.02  # U[-a, a] has variance a^2 / 3
    assert torch.all(fc.bias == 0)
    for _, bn in _bn_modules(model):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    relu = timm.create_model('wider_resnet16_tricks', init='xavier', act_layer='relu', num_classes=10)
    w = relu.stages[5].blocks[0].convs.conv2.weight  # 2048 x 1024 x 3 x 3
    assert relu.init_gain == pytest.approx(math.sqrt(2.0))
    assert abs(w.std().item() / (math.sqrt(2.0) * math.sqrt(2.0 / (1024 * 9 + 2048 * 9))) - 1) < 0.02
    with pytest.raises(ValueError, match=r"'he'.*kaiming, xavier"):
        timm.create_model('wider_resnet16_tricks', init='he', device='meta')


def test_wider_resnet_a2_strides_and_dropout():
    model = timm.create_model('wider_resnet38_a2_tricks', device='meta')  # structure only
    for idx, stage in enumerate(model.stages):
        for j, block in enumerate(stage.blocks):
            expected_stride = 2 if (j == 0 and idx in (2, 3, 4)) else 1
            assert block.convs.conv1.stride == (expected_stride,) * 2, (idx, j)
            if expected_stride == 2:
                assert block.proj_conv.stride == (2, 2)
            drops = [(n, m) for n, m in block.convs.named_children() if isinstance(m, nn.Dropout2d)]
            if idx in (4, 5):
                names = [n for n, _ in block.convs.named_children()]
                assert len(drops) == 1 and drops[0][1].p == (0.3 if idx == 4 else 0.5)
                assert names[-2] == 'dropout' and names[-1] == f'conv{len(_block_widths(block))}'
            else:
                assert drops == []
    plain = timm.create_model('wider_resnet38_tricks', device='meta')
    assert not any(isinstance(m, (nn.Dropout, nn.Dropout2d)) for m in plain.stages.modules())
    assert all(b.stride == 1 for s in plain.stages for b in s.blocks)


def _stage_stride_dilation(model) -> list[tuple[int, set[int]]]:
    out = []
    for stage in model.stages:
        dils = {m.dilation[0] for m in stage.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)}
        out.append((stage.blocks[0].stride, dils))
    return out


@pytest.mark.parametrize('output_stride, expected', [
    # inplace_abn WiderResNetA2(dilation=True): stage 3 strided, stage 4 dilation 2, stages 5-6 dilation 4
    (8, [(1, {1}), (1, {1}), (2, {1}), (1, {2}), (1, {4}), (1, {4})]),
    (16, [(1, {1}), (1, {1}), (2, {1}), (2, {1}), (1, {2}), (1, {2})]),
    (32, [(1, {1}), (1, {1}), (2, {1}), (2, {1}), (2, {1}), (1, {1})]),
])
def test_wider_resnet_a2_output_stride(output_stride, expected):
    # a meta-device model propagates shapes without computing: the 105M-parameter net costs nothing here
    model = timm.create_model('wider_resnet38_a2_tricks', output_stride=output_stride, num_classes=3, device='meta')
    assert _stage_stride_dilation(model) == expected
    feats = model.eval().forward_features(_input('wider_resnet38_a2_tricks').to('meta'))
    assert feats.shape == (2, 4096, 64 // output_stride, 64 // output_stride)
    assert model.feature_info[-1]['reduction'] == output_stride


def test_stage_plan_errors():
    pools, no_strides = (True,) * 5 + (False,), (False,) * 6
    assert [p['reduction'] for p in stage_plan(pools, no_strides)] == [2, 4, 8, 16, 32, 32]
    with pytest.raises(ValueError, match=r'output_stride=16.*valid choices: 32'):
        stage_plan(pools, no_strides, 16)
    with pytest.raises(ValueError, match=r'output_stride=16.*valid choices: 32'):
        timm.create_model('wider_resnet16_tricks', output_stride=16)
    with pytest.raises(ValueError, match=r'output_stride=4.*valid choices: 8, 16, 32'):
        timm.create_model('wider_resnet38_a2_tricks', output_stride=4)


@pytest.mark.parametrize('name, output_stride, reductions', [
    ('wider_resnet16_tricks', 32, [1, 2, 4, 8, 16, 32, 32, 32]),
    ('wider_resnet38_a2_tricks', 8, [1, 2, 4, 8, 8, 8, 8, 8]),
])
def test_wider_resnet_features_only(name, output_stride, reductions):
    model = timm.create_model(name, features_only=True, output_stride=output_stride).eval()
    channels = [64, 128, 256, 512, 1024, 2048, 4096, 4096]
    assert model.feature_info.channels() == channels
    assert model.feature_info.reduction() == reductions
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model(x)
    expected = [(2, c, 32 // r, 32 // r) for c, r in zip(channels, reductions, strict=True)]
    assert [tuple(f.shape) for f in feats] == expected
    picked = timm.create_model(name, features_only=True, out_indices=(1, 3), output_stride=output_stride)
    assert picked.feature_info.channels() == [128, 512]


def _bn_act(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Eval-mode BN + leaky ReLU(0.01), written out."""
    shape = (1, -1, 1, 1)
    y = (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return torch.where(y >= 0, y, 0.01 * y)


def _randomise_bn(block: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


def test_identity_block_projection_uses_normalised_input():
    torch.manual_seed(0)
    block = IdentityResidualBlock(4, (6, 8), stride=2).eval()
    _randomise_bn(block)
    x = torch.randn(2, 4, 8, 8)
    xn = _bn_act(x, block.bn1)
    h = _bn_act(F.conv2d(xn, block.convs.conv1.weight, stride=2, padding=1), block.convs.bn2)
    expected = F.conv2d(h, block.convs.conv2.weight, padding=1) + F.conv2d(xn, block.proj_conv.weight, stride=2)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)


def test_identity_block_identity_shortcut_uses_raw_input():
    torch.manual_seed(0)
    block = IdentityResidualBlock(8, (4, 6, 8), dilation=2).eval()
    _randomise_bn(block)
    assert block.proj_conv is None
    x = torch.randn(2, 8, 8, 8)
    xn = _bn_act(x, block.bn1)
    h = _bn_act(F.conv2d(xn, block.convs.conv1.weight), block.convs.bn2)
    h = _bn_act(F.conv2d(h, block.convs.conv2.weight, padding=2, dilation=2), block.convs.bn3)
    expected = F.conv2d(h, block.convs.conv3.weight) + x
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)
    with pytest.raises(ValueError, match='two or three'):
        IdentityResidualBlock(8, (8,))


# ---------------------------------------------------------------- Xception

XCEPTION_BLOCKS = {'xception41_tricks': (13, 8), 'xception65_tricks': (21, 16), 'xception71_tricks': (23, 16)}


@pytest.mark.parametrize('name', XCEPTIONS)
def test_xception_layout_matches_timm(name):
    model = timm.create_model(name, num_classes=11, device='meta')
    ref = timm.create_model(name.replace('_tricks', ''), num_classes=11, device='meta')
    total, middle = XCEPTION_BLOCKS[name]
    assert len(model.blocks) == total
    middle_blocks = [b for b in model.blocks
                     if b.in_channels == b.out_channels == 728 and b.shortcut is None and not b.no_skip]
    assert len(middle_blocks) == middle
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_xception_defaults():
    model = timm.create_model('xception65_tricks')
    bns = _bn_modules(model)
    assert len(bns) > 100
    assert all(bn.eps == 1e-3 and bn.momentum == 3e-4 for _, bn in bns)
    assert model.drop_rate == 0.5 and model.head.drop.p == 0.5
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == (3, 299, 299) and cfg['crop_pct'] == 0.903 and cfg['interpolation'] == 'bicubic'
    assert cfg['mean'] == timm.data.IMAGENET_INCEPTION_MEAN and cfg['std'] == timm.data.IMAGENET_INCEPTION_STD
    custom = timm.create_model('xception41_tricks', bn_eps=1e-5, bn_momentum=0.1, drop_rate=0.2)
    assert all(bn.eps == 1e-5 and bn.momentum == 0.1 for _, bn in _bn_modules(custom))
    assert custom.head.drop.p == 0.2
    with pytest.raises(ValueError, match='norm_layer'):
        timm.create_model('xception41_tricks', norm_layer=nn.BatchNorm2d, bn_eps=1e-5)
    with pytest.raises(ValueError, match=r'output_stride=12.*8, 16, 32'):
        timm.create_model('xception41_tricks', output_stride=12)


def test_xception_dw_act():
    ref = timm.create_model('xception65', device='meta')
    plain = timm.create_model('xception65_tricks', device='meta')
    dw = timm.create_model('xception65_tricks', dw_act=True, device='meta')

    def act_dw_types(m):
        return [type(s.act_dw) for s in m.modules() if isinstance(s, SeparableConv2d)]

    assert act_dw_types(plain) == act_dw_types(ref)
    assert act_dw_types(plain) == [nn.Identity] * (20 * 3) + [nn.ReLU] * 3
    assert act_dw_types(dw) == [nn.ReLU] * 63
    # act_pw is untouched: the next separable conv's leading ReLU still provides it
    assert [type(s.act_pw) for s in dw.modules() if isinstance(s, SeparableConv2d)] == \
        [type(s.act_pw) for s in ref.modules() if isinstance(s, SeparableConv2d)]
    plain, dw = timm.create_model('xception41_tricks'), timm.create_model('xception41_tricks', dw_act=True)
    dw.load_state_dict(plain.state_dict(), strict=True)  # the activation adds no parameters
    x = _input('xception41_tricks')
    with torch.no_grad():
        assert not torch.allclose(dw.eval()(x), plain.eval()(x))


def test_xception_dw_act_counts_the_applied_activations():
    # DeepLab v3+ text (Sec. 3.2): BN + ReLU after each 3x3 depthwise conv; the TF code (and timm): only in the last
    # exit-flow block. Count the depthwise ReLUs that run in a forward pass: 3 of 39 separable convs for
    # Xception-41 as built by default, all 39 with dw_act=True.
    def applied(model):
        calls = []
        for s in model.modules():
            if isinstance(s, SeparableConv2d):
                s.act_dw.register_forward_hook(lambda mod, i, o: calls.append(type(mod)))
        with torch.no_grad():
            model.eval()(_input('xception41_tricks', batch=1))
        return calls

    plain = applied(timm.create_model('xception41_tricks', num_classes=5))
    dw = applied(timm.create_model('xception41_tricks', num_classes=5, dw_act=True))
    assert len(plain) == len(dw) == 13 * 3
    assert plain.count(nn.ReLU) == 3 and dw.count(nn.ReLU) == 39


def test_xception_features_only():
    model = timm.create_model('xception41_tricks', features_only=True).eval()
    assert model.feature_info.channels() == [128, 256, 728, 1024, 2048]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    with torch.no_grad():
        feats = model(_input('xception41_tricks'))
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]


# ---------------------------------------------------------------- Myrtle ResNet-9

# The network of posts 4-7 (3x3 prep conv, pool last); the defaults are post 8's final one (tests/test_myrtle_post8.py)
POSTS_4_7 = dict(whitening=False, pool_order='conv_bn_act_pool')


def test_resnet9_layout():
    model = timm.create_model('resnet9_tricks', **POSTS_4_7)
    assert model.num_classes == 10 and model.fc.out_features == 10 and model.fc.bias is None
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert all(m.kernel_size == (3, 3) and m.padding == (1, 1) and m.bias is None for m in convs.values())
    expected = {
        'prep.conv': (3, 64), 'layer1.conv': (64, 128), 'layer2.conv': (128, 256), 'layer3.conv': (256, 512),
        'layer1.residual.res1.conv': (128, 128), 'layer1.residual.res2.conv': (128, 128),
        'layer3.residual.res1.conv': (512, 512), 'layer3.residual.res2.conv': (512, 512),
    }
    assert {n: (m.in_channels, m.out_channels) for n, m in convs.items()} == expected
    assert isinstance(model.prep.pool, nn.Identity) and model.prep.residual is None
    for layer in ('layer1', 'layer2', 'layer3'):
        pool = model.get_submodule(f'{layer}.pool')
        assert isinstance(pool, nn.MaxPool2d) and pool.kernel_size == 2
    assert model.layer2.residual is None
    assert model.global_pool.pool_type == 'max'
    assert all(type(m) is nn.BatchNorm2d for _, m in _bn_modules(model))
    assert all(isinstance(m, nn.ReLU) for n, m in model.named_modules() if n.endswith('.act'))
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == (3, 32, 32) and cfg['num_classes'] == 10 and cfg['crop_pct'] == 1.0
    assert cfg['mean'] == (0.4914, 0.4822, 0.4465) and cfg['std'] == (0.2470, 0.2435, 0.2616)
    assert cfg['first_conv'] == 'prep.conv'


@pytest.mark.parametrize('name, channels, reductions', [
    ('resnet9_tricks', [64, 128, 256, 512], [1, 2, 4, 8]),
    ('resnet50a_tricks', [64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32]),
])
def test_features_only(name, channels, reductions):
    model = timm.create_model(name, features_only=True).eval()
    assert model.feature_info.channels() == channels
    assert model.feature_info.reduction() == reductions
    x = _input(name)
    with torch.no_grad():
        feats = model(x)
    assert [tuple(f.shape) for f in feats] == [
        (2, c, x.shape[-1] // r, x.shape[-1] // r) for c, r in zip(channels, reductions, strict=True)]


def test_resnet9_forward_by_hand():
    """conv -> BN -> act -> pool, residual x + res2(res1(x)), global max pool, scaled bias-free linear."""
    torch.manual_seed(0)
    model = timm.create_model('resnet9_tricks', **POSTS_4_7).eval()
    for _, bn in _bn_modules(model):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 1.5)
    x = _input('resnet9_tricks')

    def cba(layer, h, pool=False):
        bn = layer.bn
        h = F.conv2d(h, layer.conv.weight, padding=1)
        h = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps).relu()
        return F.max_pool2d(h, 2) if pool else h

    def res(layer, h):
        return h + cba(layer.residual.res2, cba(layer.residual.res1, h))

    with torch.no_grad():
        h = cba(model.prep, x)
        h = res(model.layer1, cba(model.layer1, h, pool=True))
        h = cba(model.layer2, h, pool=True)
        h = res(model.layer3, cba(model.layer3, h, pool=True))
        expected = F.linear(h.amax(dim=(2, 3)), model.fc.weight) * 0.125
        torch.testing.assert_close(model(x), expected)


def test_resnet9_output_scale():
    torch.manual_seed(0)
    scaled = timm.create_model('resnet9_tricks').eval()
    raw = timm.create_model('resnet9_tricks', output_scale=1.0).eval()
    raw.load_state_dict(scaled.state_dict())
    x = _input('resnet9_tricks')
    with torch.no_grad():
        assert torch.equal(scaled(x), raw(x) * 0.125)  # a power of two: exact


def test_resnet9_celu_and_bad_act():
    def alphas(model):
        return {m.alpha for n, m in model.named_modules() if n.endswith('.act')}

    model = timm.create_model('resnet9_tricks', act='celu', celu_alpha=0.3)
    assert all(isinstance(m, nn.CELU) for n, m in model.named_modules() if n.endswith('.act'))
    assert alphas(model) == {0.3}
    assert alphas(timm.create_model('resnet9_tricks', act='celu')) == {0.075}
    assert alphas(timm.create_model('resnet9_tricks', act='celu', bn_weight_frozen=True)) == {0.3}
    with pytest.raises(ValueError, match=r"'gelu'.*relu, celu"):
        timm.create_model('resnet9_tricks', act='gelu')


def test_resnet9_ghost_bn():
    model = timm.create_model('resnet9_tricks', ghost_bn_splits=2, bn_eps=1e-3, bn_momentum=0.2)
    bns = _bn_modules(model)
    assert len(bns) == 8
    assert all(isinstance(m, GhostBatchNorm2d) and m.num_splits == 2 for _, m in bns)
    assert all(m.eps == 1e-3 and m.momentum == 0.2 for _, m in bns)
    model.train()
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    with pytest.raises(ValueError, match=r'batch size 3 is not divisible by num_splits=2'):
        model(torch.randn(3, 3, 32, 32))
    model.eval()
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)  # eval uses running stats: any batch size
    assert all(type(m) is nn.BatchNorm2d for _, m in _bn_modules(timm.create_model('resnet9_tricks',
                                                                                   ghost_bn_splits=1)))
    with pytest.raises(ValueError, match='ghost_bn_splits'):
        timm.create_model('resnet9_tricks', ghost_bn_splits=-2)


def test_resnet9_frozen_bn_weights():
    torch.manual_seed(0)
    model = timm.create_model('resnet9_tricks', bn_weight_frozen=True)
    bns = _bn_modules(model)
    assert all(not m.weight.requires_grad and torch.all(m.weight == 1.0) for _, m in bns)
    assert all(m.bias.requires_grad for _, m in bns)
    conv_before = model.prep.conv.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    loss = F.cross_entropy(model(_input('resnet9_tricks', batch=4)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    assert all(torch.all(m.weight == 1.0) for _, m in bns)
    assert not torch.equal(model.prep.conv.weight, conv_before)
    half = timm.create_model('resnet9_tricks', bn_weight_frozen=True, bn_weight_init=0.5)
    assert all(torch.all(m.weight == 0.5) for _, m in _bn_modules(half))


# ---------------------------------------------------------------- ghost batch norm

def _split_reference(x, splits, w, b, eps):
    return torch.cat([F.batch_norm(c, None, None, w, b, True, 0.0, eps) for c in x.chunk(splits)])


def test_ghost_batch_norm_functional():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 5, 4, generator=g) * 3 + 1
    w, b = torch.randn(3, generator=g), torch.randn(3, generator=g)
    rm, rv = torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.5
    rm0, rv0 = rm.clone(), rv.clone()
    out = ghost_batch_norm(x, 4, rm, rv, w, b, momentum=0.1, eps=1e-5)
    torch.testing.assert_close(out, _split_reference(x, 4, w, b, 1e-5))
    chunks = x.chunk(4)
    split_means = torch.stack([c.mean(dim=(0, 2, 3)) for c in chunks])
    split_vars = torch.stack([c.var(dim=(0, 2, 3), unbiased=True) for c in chunks])
    torch.testing.assert_close(rm, 0.9 * rm0 + 0.1 * split_means.mean(0))
    torch.testing.assert_close(rv, 0.9 * rv0 + 0.1 * split_vars.mean(0))
    # one split is plain batch norm
    torch.testing.assert_close(ghost_batch_norm(x, 1, None, None, w, b), F.batch_norm(x, None, None, w, b, True))
    with pytest.raises(ValueError, match='batch size 8 is not divisible by num_splits=3'):
        ghost_batch_norm(x, 3)


def test_ghost_batch_norm_module():
    torch.manual_seed(0)
    gbn = GhostBatchNorm2d(3, num_splits=2, momentum=0.1)
    nn.init.normal_(gbn.weight)
    nn.init.normal_(gbn.bias)
    x = torch.randn(6, 3, 4, 4)
    out = gbn(x)
    torch.testing.assert_close(out, _split_reference(x, 2, gbn.weight, gbn.bias, gbn.eps))
    split_means = torch.stack([c.mean(dim=(0, 2, 3)) for c in x.chunk(2)])
    torch.testing.assert_close(gbn.running_mean, 0.1 * split_means.mean(0))
    assert gbn.num_batches_tracked.item() == 1
    gbn.eval()
    expected = F.batch_norm(x, gbn.running_mean, gbn.running_var, gbn.weight, gbn.bias, False, 0.0, gbn.eps)
    assert torch.equal(gbn(x[:5]), expected[:5])
    gbn.train()
    with pytest.raises(ValueError, match='batch size 5 is not divisible by num_splits=2'):
        gbn(x[:5])
    with pytest.raises(ValueError, match='num_splits'):
        GhostBatchNorm2d(3, num_splits=0)
    # gradients flow to input, gamma and beta
    x.requires_grad_(True)
    gbn(x).pow(2).sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (x, gbn.weight, gbn.bias))


def test_models_package_exports():
    assert timm_tricks.models.__all__
    for name in timm_tricks.models.__all__:
        assert hasattr(timm_tricks.models, name), name
