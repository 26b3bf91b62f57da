"""What the benchmark scripts share: a line describing the machine, and replacing a section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """CPU, core count, the library versions and the load average: the facts a reader needs to weigh a figure."""
    import timm
    import torch

    return (f"{cpu_model()}; nproc = {os.cpu_count()}; torch {torch.__version__}, timm {timm.__version__}, "
            f"Python {platform.python_version()}; 1-minute load average at start "
            f"{os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan'):.2f}")


def write_section(heading: str, text: str, path: Path = DOCS) -> None:
    """Replace the section of ``path`` that starts at ``heading`` (up to the next ``## `` heading), or append it."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _m: text.rstrip("\n") + "\n\n", old, count=1).rstrip("\n") + "\n"
    else:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def publish(heading: str, text: str, write: bool) -> None:
    """Print a benchmark's section, and with ``write`` (its ``--write-docs``) put it into docs/benchmarks.md."""
    print(text)
    if write:
        write_section(heading, text)
        print(f"wrote the section to {DOCS}")
