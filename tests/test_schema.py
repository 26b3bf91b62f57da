"""The typed-field engine (timm_tricks.schema): building schemas from dicts, the messages, and override layers."""

from dataclasses import dataclass
from typing import Any

import pytest

from timm_tricks.errors import ConfigError
from timm_tricks.schema import build, dotted_keys, merge, merge_layers, nest, option, parse_overrides, suggest


@dataclass
class Inner:
    rate: float = option(0.1, gt=0.0, le=1.0)
    kind: str = option("a", choices=("alpha", "beta", "a"))


@dataclass(kw_only=True)
class Outer:
    name: str = option(doc="what it is called")
    inner: Inner = option(None)
    items: list[Inner] = option([])
    extra: dict[str, Any] = option({})
    count: int | None = option(None, ge=1)

    def __post_init__(self) -> None:
        self.inner = self.inner or Inner()


def test_build_converts_and_checks_every_entry():
    out = build(Outer, {"name": "x", "inner": {"rate": 1}, "items": [{"kind": "beta"}], "count": 3.0})
    assert out.inner.rate == 1.0 and isinstance(out.inner.rate, float)
    assert out.items == [Inner(kind="beta")] and out.count == 3 and isinstance(out.count, int)
    assert out.extra == {} and out.extra is not Outer(name="y").extra  # a list or dict default is copied


@pytest.mark.parametrize("data, message", [
    ({}, "needs a 'name:' (what it is called)"),
    ({"name": "x", "inner": {"rat": 0.2}}, "unknown entry 'inner.rat'; did you mean 'inner.rate'? Valid keys in "
                                           "inner: inner.rate, inner.kind"),
    ({"name": "x", "rate": 0.2}, "did you mean 'inner.rate'"),
    ({"name": "x", "inner": {"rate": 0}}, "inner.rate=0.0 is out of range: must be > 0.0"),
    ({"name": "x", "inner": {"kind": "alpah"}}, "inner.kind='alpah' is not a valid choice; valid: alpha, beta, a; "
                                                "did you mean 'alpha'?"),
    ({"name": "x", "items": [{}, {"rate": "fast"}]}, "items[1].rate='fast' must be float"),
    ({"name": "x", "count": 2.5}, "count=2.5 must be int | None"),
    ({"name": "x", "inner": 3}, "inner must be a mapping, got 3"),
    ({"name": 1}, "name=1 must be str"),
])
def test_build_names_each_mistake(data, message):
    with pytest.raises(ConfigError) as err:
        build(Outer, data, "entry")
    assert message in str(err.value)


def test_dotted_keys_walk_nested_schemas():
    assert dotted_keys(Outer) == ["name", "inner.rate", "inner.kind", "items", "extra", "count"]


def test_suggest_prefers_the_same_section_and_the_same_last_part():
    pool = ["optim.lr", "optim.name", "schedule.name", "model.name"]
    assert suggest("optim.lrr", pool) == "; did you mean 'optim.lr'?"
    assert suggest("lr", pool) == "; did you mean 'optim.lr'?"
    assert suggest("model.nam", pool) == "; did you mean 'model.name'?"
    assert suggest("zzz", pool) == "."


def test_nest_splits_dotted_keys_and_merges_later_ones():
    assert nest({"optim.lr": 0.1, "train": {"epochs": 3}, "train.seed": 1}) == {
        "optim": {"lr": 0.1}, "train": {"epochs": 3, "seed": 1}}
    assert nest([("model.kwargs.act", "relu"), ("model.kwargs", {"depth": 2})]) == {
        "model": {"kwargs": {"act": "relu", "depth": 2}}}
    with pytest.raises(ConfigError, match="'optim.lr' conflicts with the earlier value of 'optim'"):
        nest([("optim", 3), ("optim.lr", 0.1)])


def test_merge_replaces_all_but_mappings():
    base = {"a": {"b": 1, "c": [1]}, "d": 1}
    assert merge(base, {"a": {"c": [2]}, "e": 2}) == {"a": {"b": 1, "c": [2]}, "d": 1, "e": 2}
    assert base == {"a": {"b": 1, "c": [1]}, "d": 1}  # not modified


def test_layers_of_every_form_apply_in_order():
    layers = (["optim.lr=0.2", "train.epochs=5"], {"optim.lr": 0.3}, {"train": {"epochs": 7}}, None,
              "schedule.milestones=[1, 2]")
    assert merge_layers(*layers) == {"optim": {"lr": 0.3}, "train": {"epochs": 7}, "schedule": {"milestones": [1, 2]}}
    assert parse_overrides(["a.b=null", "c="]) == {"a": {"b": None}, "c": ""}
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        merge_layers(["optim.lr"])
    with pytest.raises(ConfigError, match="a config layer is key=value strings or a mapping"):
        merge_layers(3)
