"""The built wheel carries the recipes, ladders and search spaces; the spaces name real config keys."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from timm_tricks.config import all_keys, list_recipes

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_recipes_and_tune_spaces(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("timm_tricks-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("recipes", "ladders"):
        shipped = sorted((ROOT / "timm_tricks" / folder).glob("*.yaml"))
        assert shipped
        for path in shipped:
            assert f"timm_tricks/{folder}/{path.name}" in names
    spaces = sorted((ROOT / "tune_spaces").glob("*.yaml"))
    assert spaces
    for space in spaces:
        assert f"timm_tricks/tune_spaces/{space.name}" in names
    assert "timm_tricks/models/__init__.py" in names
    assert any(n.endswith("entry_points.txt") and "timm-tricks" in zipfile.ZipFile(wheel).read(n).decode()
               for n in names)


def test_tune_spaces_name_existing_recipes_and_keys():
    keys = set(all_keys())
    for space in (ROOT / "tune_spaces").glob("*.yaml"):
        data = yaml.safe_load(space.read_text())
        assert data["recipe"] in list_recipes(), space.name
        assert set(data["space"]) <= keys, space.name
