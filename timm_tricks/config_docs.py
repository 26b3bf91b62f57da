"""The config explained: ``timm-tricks keys`` (every key with its type, default, range and description) and
``timm-tricks recipes show`` (a recipe file with its comments, then what it resolves to).

Both read the schema's metadata (:func:`timm_tricks.schema.option`: choices, bounds, ``doc``) and need neither
torch nor timm.

**Which keys do something.** Some keys act only under another key's value; ``recipes show`` leaves out the keys
that do nothing in the recipe at hand (and says which), by one rule per section (:data:`ACTS_UNDER`):

- ``schedule``: each schedule's own keys act only under that ``schedule.name`` (``milestones`` and ``gamma``: step;
  ``decay_rate`` and ``decay_every``: exponential; ``min_lr``: cosine and linear; ``knots``: piecewise), and
  ``reference_epochs`` only with ``rescale_epochs``;
- ``augment``: each pipeline's own keys act only under that ``augment.train`` (``color``, ``pca_std``: bot;
  ``crop_padding``, ``cutout``: batched; ``flip``: bot and batched); ``eval_resize`` and ``interpolation`` resize
  image files, so they act only on file data (``data.source`` folder: or timm:);
- ``distill``, ``mixup``, ``ema``, ``loss``, ``model``, ``optim``: a section's settings act only when its switch is
  on (a ``distill.teacher``, ``mixup.alpha`` > 0, ``ema.enabled``, ``loss.label_smoothing`` > 0,
  ``model.pretrained``, ``optim.linear_scaling`` for ``optim.base_batch_size``);
- ``data``, ``train``, ``eval``: every key acts.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .config import Config, base_ref, load_config, recipe_path
from .errors import UserError
from .schema import flatten, leaf_fields, nest, unknown

METADATA = ("name", "description", "source")  # a recipe's top-level keys: what it is, not how it trains


def _is(*values: str) -> Callable[[Any], bool]:
    return lambda v: v in values


_ON: Callable[[Any], bool] = bool

#: key -> (the key it depends on, whether that key's value lets it act, the rule in words)
ACTS_UNDER: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    "schedule.milestones": ("schedule.name", _is("step"), "step"),
    "schedule.gamma": ("schedule.name", _is("step"), "step"),
    "schedule.decay_rate": ("schedule.name", _is("exponential"), "exponential"),
    "schedule.decay_every": ("schedule.name", _is("exponential"), "exponential"),
    "schedule.min_lr": ("schedule.name", _is("cosine", "linear"), "cosine or linear"),
    "schedule.knots": ("schedule.name", _is("piecewise"), "piecewise"),
    "schedule.reference_epochs": ("schedule.rescale_epochs", _ON, "true"),
    "augment.color": ("augment.train", _is("bot"), "bot"),
    "augment.pca_std": ("augment.train", _is("bot"), "bot"),
    "augment.crop_padding": ("augment.train", _is("batched"), "batched"),
    "augment.cutout": ("augment.train", _is("batched"), "batched"),
    "augment.flip": ("augment.train", _is("bot", "batched"), "bot or batched"),
    "augment.eval_resize": ("data.source", lambda v: v.split(":")[0] in ("folder", "timm"), "folder: or timm:"),
    "augment.interpolation": ("data.source", lambda v: v.split(":")[0] in ("folder", "timm"), "folder: or timm:"),
    "distill.checkpoint": ("distill.teacher", _ON, "set"),
    "distill.temperature": ("distill.teacher", _ON, "set"),
    "distill.weight": ("distill.teacher", _ON, "set"),
    "mixup.off_epochs": ("mixup.alpha", _ON, "> 0"),
    "ema.decay": ("ema.enabled", _ON, "true"),
    "ema.every_steps": ("ema.enabled", _ON, "true"),
    "loss.smoothing_form": ("loss.label_smoothing", _ON, "> 0"),
    "model.pretrained_file": ("model.pretrained", _ON, "true"),
    "optim.base_batch_size": ("optim.linear_scaling", _ON, "true"),
}


def inert_keys(cfg: Config) -> dict[str, str]:
    """The keys that do nothing in ``cfg`` (:data:`ACTS_UNDER`), each with why: ``{'schedule.milestones':
    'act only with schedule.name step'}``."""
    values = flatten(cfg.to_dict())
    return {key: f"act only with {switch} {words}" for key, (switch, acts, words) in ACTS_UNDER.items()
            if not acts(values[switch])}


# ----------------------------------------------------------------------------------------------------------------
# keys


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    """One config key as ``timm-tricks keys`` shows it."""

    key: str
    type: str
    default: Any
    range: str
    doc: str


def key_docs(cls: type = Config, prefix: str = "") -> list[KeyDoc]:
    """Every dotted key of schema ``cls`` (default: the config) with its type, default, range and description."""
    out = []
    for key, f, t in leaf_fields(cls, prefix):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        out.append(KeyDoc(key, _type(t), default, _range(f.metadata), f.metadata.get("doc", "")))
    return out


def sections() -> dict[str, str]:
    """Section name -> its one-line description (the first line of the section's docstring)."""
    hints = typing.get_type_hints(Config)
    out = {"": "what the recipe is: its name, a one-line description, and where its numbers come from"}
    for f in dataclasses.fields(Config):
        if dataclasses.is_dataclass(hints[f.name]):
            out[f.name] = (hints[f.name].__doc__ or "").strip().splitlines()[0].replace("``", "")
    return out


def _type(t: Any) -> str:
    return t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")


def yaml_value(value: Any) -> str:
    """A value as one would write it in a recipe or ``--set`` (``null``, ``true``, ``[30, 60, 90]``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bound(value: float) -> str:
    if isinstance(value, int) and value > 2**20 and (value + 1) & value == 0:  # 2^k - 1
        return f"2^{(value + 1).bit_length() - 1} - 1"
    return f"{value:g}"


def _range(meta: Any) -> str:
    if meta.get("choices") is not None:
        return "one of " + ", ".join(yaml_value(c) for c in meta["choices"])
    parts = [f"{sym} {_bound(meta[name])}" for name, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
             if meta.get(name) is not None]
    return ", ".join(parts)


def format_keys(section: str | None = None) -> str:
    """``timm-tricks keys [SECTION]``: per section its description, then each key as ``key: type = default,
    range`` and its description on the next line. ``section`` may be a section (``optim``) or one key
    (``optim.lr``)."""
    docs = key_docs()
    titles = sections()
    if section:
        chosen = [d for d in docs if d.key == section or d.key.startswith(section + ".")]
        if not chosen:
            names = [s for s in titles if s]
            raise UserError(unknown("config section or key", section, names, names + [d.key for d in docs]))
        docs = chosen
    lines: list[str] = []
    current = None
    for d in docs:
        group = d.key.rpartition(".")[0]
        if group != current:
            current = group
            lines += ([""] if lines else []) + [f"{group or 'top level'}: {titles.get(group, '')}"]
        bounds = f", {d.range}" if d.range else ""
        lines.append(f"  {d.key}: {d.type} = {yaml_value(d.default)}{bounds}")
        if d.doc:
            lines.append(f"      {d.doc}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# recipes show


def show_recipe(name: str, everything: bool = False, check_names: bool = True) -> str:
    """``timm-tricks recipes show NAME``: the recipe file as written (comments kept), then the resolved values
    that differ from the defaults (``everything``: all of them), without the keys that do nothing here
    (:func:`inert_keys`, listed at the end)."""
    path = recipe_path(name)
    cfg = load_config(name, check_names=check_names)
    text = path.read_text()
    chain = _base_chain(name)
    resolved = flatten(cfg.to_dict())
    defaults = flatten(Config().to_dict())
    inert = inert_keys(cfg)
    candidates = {k: v for k, v in resolved.items() if everything or (k not in METADATA and v != defaults[k])}
    shown = {k: v for k, v in candidates.items() if k not in inert}
    what = "every resolved value" if everything else "the resolved values that differ from the defaults"
    out = [f"# {_where(path)}", text.rstrip("\n"), "",
           f"# ---- {what}" + ("" if everything else " (--all for every value)"),
           *([f"# (the recipe and its bases: {' <- '.join(chain)})"] if len(chain) > 1 else []),
           yaml.dump(nest(shown), Dumper=_Dumper, sort_keys=False, width=118).rstrip("\n")]
    hidden: dict[str, list[str]] = {}
    for key in candidates:
        if key in inert:
            hidden.setdefault(inert[key], []).append(key)
    if hidden:
        out.append("# not shown, as they do nothing in this recipe:")
        out += [f"#   {', '.join(keys)}: {why}" for why, keys in hidden.items()]
    return "\n".join(out) + "\n"


class _Dumper(yaml.SafeDumper):
    """YAML in blocks, but lists (of numbers, or of number pairs such as knots) on one line, as recipes write
    them."""


_Dumper.add_representer(list, lambda dumper, data: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=not any(isinstance(v, dict) for v in data)))


def _base_chain(name: str | Path) -> list[str]:
    """The recipe and its ``base:`` recipes, derived first."""
    chain, path = [], recipe_path(name).resolve()
    while True:
        chain.append(path.stem)
        base = yaml.safe_load(path.read_text()).get("base")
        if not isinstance(base, str) or len(chain) > 20:
            return chain
        path = recipe_path(base_ref(path, base)).resolve()


def _where(path: Path) -> str:
    """A shipped recipe's path inside the package (``timm_tricks/recipes/x.yaml``), else the path given."""
    parts = path.resolve().parts
    return "/".join(parts[parts.index("timm_tricks"):]) if "timm_tricks" in parts else str(path)
