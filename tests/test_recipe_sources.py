"""Every number in a shipped recipe, ladder and search space carries its source; the cited values hold.

The source-comment rule, checked on the YAML text of ``timm_tricks/recipes/*.yaml``, ``timm_tricks/ladders/*.yaml``
and ``tune_spaces/*.yaml``:

* A *value line* is a line ``key: value``, ``- key: value`` or ``- value`` whose value, once any ``#`` comment is
  cut off, is not empty. It *holds a number* when that value, read as YAML, is an int or a float (not a bool), a
  string that ``float()`` accepts (YAML 1.1 reads ``1e-4`` as a string), or a flow list / mapping with such a
  number anywhere inside (``[30, 60, 90]``, ``{loguniform: [0.025, 0.4]}``).
* A line that holds a number must carry an inline, non-empty ``# comment`` naming its source (a paper section or
  table, a reference file and line or notebook cell, or "declared" for a choice of this project), or sit directly
  under a commented block: its parent line (the nearest line above it, not blank and not comment-only, that is
  indented less) carries an inline comment, which then covers all its direct children.

Text in comments and in string values (descriptions, names) is not a value, whatever digits it holds.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import yaml
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import timm_tricks.models  # noqa: F401  (registers the *_tricks models)
from timm_tricks.augment import bot_eval_transform, bot_train_transform
from timm_tricks.build import build_batches
from timm_tricks.config import ConfigError, list_recipes, load_config
from timm_tricks.data import parse_source
from timm_tricks.ladder import load_ladder

ROOT = Path(__file__).resolve().parents[1]
SOURCED_FILES = sorted([*(ROOT / "timm_tricks" / "recipes").glob("*.yaml"),
                        *(ROOT / "timm_tricks" / "ladders").glob("*.yaml"),
                        *(ROOT / "tune_spaces").glob("*.yaml")])


# ---------------------------------------------------------------------------------------------------------- the rule

def _split_comment(line: str) -> tuple[str, str | None]:
    """``(code, comment)``: the comment starts at the first ``#`` outside quotes that begins the line or follows a
    space (YAML's rule); None when there is none. A quote opens a quoted scalar only where a scalar can start (not
    the apostrophe inside ``Myrtle's``)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"" and (i == 0 or line[i - 1] in " \t[{,:"):
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), None


def _has_number(value: object) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, (int, float)):
        return True
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    if isinstance(value, list):
        return any(_has_number(v) for v in value)
    if isinstance(value, dict):
        return any(_has_number(v) for v in value.values())
    return False


def _value_text(code: str) -> str:
    """The value part of a ``key: value`` / ``- key: value`` / ``- value`` line ('' for a bare ``key:``)."""
    body = code.strip()
    if body.startswith("- "):
        body = body[2:].strip()
    elif body == "-":
        return ""
    key, sep, rest = body.partition(": ")
    if sep:
        return rest.strip()
    return "" if body.endswith(":") else body


def unsourced_numbers(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of every line of YAML ``text`` that holds a number with no source comment."""
    bad = []
    seen: list[tuple[int, bool]] = []  # (indent, has inline comment) of the value/key lines so far
    for number, line in enumerate(text.splitlines(), 1):
        code, comment = _split_comment(line)
        if not code.strip():
            continue  # blank or comment-only
        indent = len(code) - len(code.lstrip())
        parent_commented = next((c for i, c in reversed(seen) if i < indent), False)
        seen.append((indent, bool(comment)))
        raw = _value_text(code)
        if not raw:
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        if _has_number(value) and not comment and not parent_commented:
            bad.append((number, line))
    return bad


def test_rule_reads_every_shipped_file():
    names = {p.parent.name + "/" + p.stem for p in SOURCED_FILES}
    assert {"recipes/" + r for r in list_recipes()} <= names
    assert {"ladders/bag_of_tricks", "ladders/myrtle_resnet9", "tune_spaces/xception"} <= names


@pytest.mark.parametrize("path", SOURCED_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_number_has_a_source_comment(path):
    bad = unsourced_numbers(path.read_text())
    assert not bad, f"{path.relative_to(ROOT)}: numbers without a source comment:\n" + "\n".join(
        f"  line {n}: {line.strip()}" for n, line in bad)


def test_rule_catches_a_key_without_comment():
    text = (
        "optim:\n"
        "  lr: 0.1                # Sec. 2.1\n"
        "  momentum: 0.9\n"                           # caught: a number, no comment, parent uncommented
        "  weight_decay: 1e-4\n"                      # caught: YAML 1.1 reads 1e-4 as a string
        "  milestones: [30, 60]\n"                    # caught: numbers inside a flow list
        "  space: {uniform: [0.0, 0.2]}\n"            # caught: numbers inside a flow mapping
        "  name: sgd\n"                               # fine: not a number
        "  nesterov: true\n"                          # fine: a bool is not a number
        "  checkpoint: null\n"                        # fine
        "  note: 'a # 5 inside quotes'\n"             # fine: a string; the quoted '#' is no comment
        "rungs:\n"
        "  - name: baseline\n"
        "    paper: 75.87\n"                          # caught: its parent '- name' line has no comment
        "  - 30\n"                                    # caught: a bare list item
    )
    assert [n for n, _ in unsourced_numbers(text)] == [3, 4, 5, 6, 13, 14]


def test_rule_commented_block_covers_its_children_only():
    text = (
        "rungs:\n"
        "  - name: baseline\n"
        "    set:                 # posts 4-7: the baseline\n"
        "      model.kwargs.output_scale: 0.125\n"    # covered by the commented 'set:'
        "      optim.lr: 0.4\n"                       # covered
        "    paper: 94.1\n"                           # not covered: 'set:' is a sibling, not its parent
        "model:                   # a commented section\n"
        "  kwargs:\n"
        "    alpha: 0.3\n"                            # not covered: only direct children of a commented line are
        "  # a comment-only line between\n"
        "  drop_rate: 0.5\n"                          # covered: its parent 'model:' carries a comment
    )
    assert [n for n, _ in unsourced_numbers(text)] == [6, 9]


def test_rule_comment_needs_a_space_before_the_hash_and_some_text():
    assert _split_comment("  lr: 0.1#not a comment") == ("  lr: 0.1#not a comment", None)
    assert _split_comment("  lr: 0.1  # Sec. 2.1") == ("  lr: 0.1", "Sec. 2.1")
    assert unsourced_numbers("lr: 0.1 #\nwd: 0.1 #   \n") == [(1, "lr: 0.1 #"), (2, "wd: 0.1 #   ")]  # empty


# -------------------------------------------------------------------------------------------- the cited values hold

def test_bag_of_tricks_baseline_is_the_papers_own():
    ladder = load_ladder("bag_of_tricks")
    paper = {r.name: r.paper for r in ladder.rungs}
    assert paper["baseline"] == 75.87  # Table 2, not Table 1's 75.3 (He et al. 2016)
    assert paper["+ zero gamma"] == 76.37 and paper["+ no bias decay"] == 76.03  # Table 4, BS=1024
    text = (ROOT / "timm_tricks" / "recipes" / "bag_of_tricks_baseline.yaml").read_text()
    assert "75.87" in text and "Sec. 2.2" not in "\n".join(
        line for line in text.splitlines() if not line.startswith("#"))  # the procedure is Sec. 2.1


@pytest.mark.parametrize("recipe, model", [("xception", "legacy_xception"), ("xception_deeplab", "xception65_tricks")])
def test_xception_recipes_use_the_reference_preprocessing(recipe, model):
    cfg = load_config(recipe)
    pcfg = timm.models.get_pretrained_cfg(model)
    assert cfg.model.name == model and cfg.data.image_size == 299
    assert cfg.augment.mean == [0.5] * 3 and cfg.augment.std == [0.5] * 3  # inputs in [-1, 1]
    assert tuple(cfg.augment.mean) == tuple(pcfg.mean) and tuple(cfg.augment.std) == tuple(pcfg.std)
    assert cfg.augment.eval_resize == math.floor(299 / pcfg.crop_pct)  # timm's own resize for that crop_pct
    assert {"xception": 333, "xception_deeplab": 331}[recipe] == cfg.augment.eval_resize


def test_xception_deeplab_bn_and_depthwise_activation():
    cfg = load_config("xception_deeplab")
    kwargs = cfg.model_kwargs(num_classes=10)
    assert kwargs["bn_eps"] == 1e-3 and kwargs["bn_momentum"] == pytest.approx(1 - 0.9997)
    assert kwargs["dw_act"] is False  # the TF code's layout; model.kwargs.dw_act=true is the paper text's
    assert load_config("xception_deeplab", ["model.kwargs.dw_act=true"]).model_kwargs(10)["dw_act"] is True


def test_wider_resnet_recipe_uses_inplace_abn_init_and_statistics():
    cfg = load_config("wider_resnet")
    assert cfg.model.init == "xavier" and cfg.model_kwargs(num_classes=10)["init"] == "xavier"
    assert tuple(cfg.augment.mean) == IMAGENET_DEFAULT_MEAN and tuple(cfg.augment.std) == IMAGENET_DEFAULT_STD
    assert cfg.schedule.name == "linear" and cfg.schedule.min_lr == 0.0 and cfg.train.epochs == 90
    assert cfg.train.clip_grad is None


# -------------------------------------------------------------------------- augment.mean / augment.std in the config

def test_normalisation_keys_default_to_the_pipelines_own():
    cfg = load_config("bag_of_tricks_baseline")
    assert cfg.augment.mean is None and cfg.augment.std is None
    cfg = load_config(None, ["augment.mean=[0.5, 0.5, 0.5]", "augment.std=[0.25, 0.25, 0.25]"])
    assert cfg.augment.mean == [0.5] * 3 and cfg.augment.std == [0.25] * 3


@pytest.mark.parametrize("overrides, match", [
    (["augment.mean=[0.5, 0.5, 0.5]"], "go together"),
    (["augment.std=[0.5, 0.5, 0.5]"], "go together"),
    (["augment.mean=[0.5, 0.5]", "augment.std=[0.5, 0.5, 0.5]"], r"augment\.mean.*one value per channel"),
    (["augment.mean=[123.68, 116.779, 103.939]", "augment.std=[0.5, 0.5, 0.5]"], r"augment\.mean.*0-1 scale"),
    (["augment.mean=[0.5, 0.5, 0.5]", "augment.std=[0.5, 0.0, 0.5]"], r"augment\.std.*in \(0, 1\]"),
    (["augment.mean=[0.5, 0.5, 0.5]", "augment.std=[58.4, 57.1, 57.4]"], r"augment\.std.*0-1 scale"),
    (["augment.mean=0.5", "augment.std=[0.5, 0.5, 0.5]"], r"augment\.mean"),
])
def test_normalisation_keys_are_validated(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_transforms_apply_the_given_statistics():
    white = Image.new("RGB", (40, 48), (255, 255, 255))
    out = bot_eval_transform(32, 36, mean=(0.5,) * 3, std=(0.5,) * 3)(white)
    assert torch.allclose(out, torch.ones_like(out))  # (1 - 0.5) / 0.5
    black = Image.new("RGB", (40, 48), (0, 0, 0))
    out = bot_train_transform(32, pca_std=0.0, color=None, mean=(0.5,) * 3, std=(0.25,) * 3)(black)
    assert torch.allclose(out, torch.full_like(out, -2.0))  # (0 - 0.5) / 0.25
    with pytest.raises(ValueError, match="together"):
        bot_eval_transform(32, 36, mean=(0.5,) * 3)
    with pytest.raises(ValueError, match="three values"):
        bot_eval_transform(32, 36, mean=(0.5,) * 2, std=(0.5,) * 2)


def _one_process(batch):
    from timm_tricks.batches import Shard

    return lambda size: Shard(size, batch, rank=0, world=1, seed=0)


def test_trainer_batches_use_the_recipe_statistics(tmp_path):
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (255, 255, 255)).save(tmp_path / split / cls / f"{i}.png")
    cfg = load_config(None, [f"data.source=folder:{tmp_path}", "data.image_size=32", "data.batch_size=2",
                             "data.workers=0", "augment.mean=[0.5, 0.5, 0.5]", "augment.std=[0.5, 0.5, 0.5]"])
    batches = build_batches(cfg, parse_source(cfg.data.source), _one_process(2), torch.device("cpu"))
    images, _ = next(iter(batches.eval_batches(2)))
    assert torch.allclose(images, torch.ones_like(images))

    cfg = load_config("digits", ["augment.mean=[0.5, 0.5, 0.5]", "augment.std=[0.5, 0.5, 0.5]"])
    batches = build_batches(cfg, parse_source("digits"), _one_process(64), torch.device("cpu"))
    assert batches.data.mean == (0.5, 0.5, 0.5) and batches.data.std == (0.5, 0.5, 0.5)
    assert build_batches(load_config("digits"), parse_source("digits"), _one_process(64),
                         torch.device("cpu")).data.mean != (0.5, 0.5, 0.5)  # null: the data set's own statistics
