"""The folders of YAML files shipped with the package: recipes, ablation ladders and search spaces.

Each is a :class:`YamlFolder` of ``NAME.yaml`` files: :meth:`~YamlFolder.names` lists them, and
:meth:`~YamlFolder.find` takes a shipped name or a path to any YAML file (a ConfigError names an unknown name with
the closest shipped ones). :meth:`~YamlFolder.load` reads a file and validates it against a schema
(:mod:`timm_tricks.schema`), naming the file in every error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError
from .schema import build, unknown

T = TypeVar("T")
PACKAGE = Path(__file__).resolve().parent


def read_yaml_mapping(path: Path, what: str = "recipe") -> dict[str, Any]:
    """The mapping in YAML file ``path``; a ConfigError names the ``what`` and the file when it cannot be read, is
    not YAML, is empty (an empty recipe would train the defaults without a word), is nested beyond what the parser
    can follow, or holds something else than a mapping."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {e}") from None
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {first}") from None
    except RecursionError:
        raise ConfigError(f"{what} {str(path)!r} is nested too deeply to read") from None
    if data is None:
        raise ConfigError(f"{what} {str(path)!r} is empty; a {what} names at least its settings (or a base:)")
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r} must be a mapping, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class YamlFolder:
    """A folder of shipped ``NAME.yaml`` files of one kind (``what``: recipe, ladder, search space)."""

    what: str
    folder: Path

    def names(self) -> list[str]:
        """The shipped names, sorted."""
        return sorted(p.stem for p in self.folder.glob("*.yaml"))

    def find(self, name_or_path: str | Path) -> Path:
        """A YAML file given by path (anything with a folder or a .yaml suffix), or by a shipped name."""
        candidate = Path(name_or_path)
        if candidate.suffix in (".yaml", ".yml") or candidate.parent != Path("."):
            if not candidate.is_file():
                raise ConfigError(f"{self.what} file {str(name_or_path)!r} does not exist")
            return candidate
        path = self.folder / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(unknown(self.what, str(name_or_path), self.names()))
        return path

    def load(self, name_or_path: str | Path, schema: type[T]) -> tuple[Path, T]:
        """The file's path and its contents built as ``schema``; errors start with ``WHAT 'PATH':``."""
        path = self.find(name_or_path)
        try:
            return path, build(schema, read_yaml_mapping(path, self.what), f"{self.what} entry")
        except ConfigError as e:
            where = f"{self.what} {str(path)!r}"
            raise ConfigError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None


def _space_folder() -> Path:
    """``timm_tricks/tune_spaces`` in a wheel, the top-level ``tune_spaces/`` in a checkout."""
    packaged = PACKAGE / "tune_spaces"
    return packaged if packaged.is_dir() else PACKAGE.parent / "tune_spaces"


RECIPES = YamlFolder("recipe", PACKAGE / "recipes")
LADDERS = YamlFolder("ladder", PACKAGE / "ladders")
SPACES = YamlFolder("search space", _space_folder())
