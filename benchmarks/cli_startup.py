"""Start-up time of the command line: ``timm-tricks --help``, ``recipes`` and ``recipes show``, next to ``import timm``.

Each command runs as its own process (the installed ``timm-tricks`` console script beside this Python, with this
checkout first on ``PYTHONPATH``); the commands alternate for ``--repeats`` rounds after one warm-up round (which
fills the file cache), and the script reports the median and the best wall time of each. ``python -c "import
timm"`` runs in the same rounds as the reference: what every command paid before the CLI imported torch and timm
lazily. Targets: ``--help`` at most 1.5 s, ``recipes`` at most 2 s.

    python benchmarks/cli_startup.py --repeats 5 [--write-docs]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from docs_section import machine, publish

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Command-line start-up (benchmarks/cli_startup.py)"
TARGETS = {"--help": 1.5, "recipes": 2.0}


def cli() -> list[str]:
    """The console script beside this interpreter, or ``python -m timm_tricks`` where it is not installed."""
    script = Path(sys.executable).parent / "timm-tricks"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "timm_tricks"]


def commands() -> dict[str, list[str]]:
    """Label -> argv of every measured process."""
    return {
        "timm-tricks --help": [*cli(), "--help"],
        "timm-tricks recipes": [*cli(), "recipes"],
        "timm-tricks recipes show bag_of_tricks": [*cli(), "recipes", "show", "bag_of_tricks"],
        "timm-tricks keys": [*cli(), "keys"],
        'python -c "import timm"': [sys.executable, "-c", "import timm"],
    }


def run_once(argv: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one process; it must succeed."""
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def measure(repeats: int) -> dict[str, list[float]]:
    """Seconds per command over ``repeats`` alternating rounds, after a warm-up round."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    times: dict[str, list[float]] = {label: [] for label in commands()}
    for round_ in range(repeats + 1):
        for label, argv in commands().items():
            seconds = run_once(argv, env)
            if round_:
                times[label].append(seconds)
    return times


def report(times: dict[str, list[float]], repeats: int, load: tuple[float, float], host: str) -> str:
    """The docs section: the command, the machine, the table and the verdict on the targets."""
    lines = [HEADING, "", f"Command: `python benchmarks/cli_startup.py --repeats {repeats} --write-docs`", "",
             f"- Machine: {host}",
             f"- 1-minute load average: {load[0]:.2f} before the runs, {load[1]:.2f} after", "",
             f"Wall time of each command as a new process, {repeats} alternating rounds after a warm-up:", "",
             "| command | median s | best s | target |", "|---|---:|---:|---:|"]
    verdicts = []
    for label, values in times.items():
        median = statistics.median(values)
        target = next((t for key, t in TARGETS.items() if label.endswith(f" {key}")), None)
        if target is not None:
            verdicts.append(f"`{label}` {median:.2f} s {'<=' if median <= target else '>'} {target} s")
        lines.append(f"| `{label}` | {median:.3f} | {min(values):.3f} | {'' if target is None else f'<= {target}'} |")
    lines += ["", "Targets: " + "; ".join(verdicts) + ".", "",
              "`import timm` (which imports torch) is what each of these commands paid before the command line "
              "imported torch and timm only inside the subcommands that need them; `import timm_tricks` now "
              "registers the models through an import hook when timm is imported.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds (default 5)")
    parser.add_argument("--write-docs", action="store_true", help="replace the section in docs/benchmarks.md")
    args = parser.parse_args()
    host = machine()
    before = os.getloadavg()[0]
    times = measure(args.repeats)
    publish(HEADING, report(times, args.repeats, (before, os.getloadavg()[0]), host), args.write_docs)


if __name__ == "__main__":
    main()
