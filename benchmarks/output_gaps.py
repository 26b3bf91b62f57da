"""The longest silence of a command: run it, stamp each line of its stdout and stderr (together) with the seconds
since it started, and report the longest gap between lines, counted from the start and up to its exit.

``timm-tricks tune`` and ``ablate`` should never leave a watcher waiting more than 30 s (issue 14: ``make demo``
once printed nothing for 20 minutes). The stamped lines go to ``--log``; the load average before and after is
reported with the gap, since a busy machine stretches every phase.

    python benchmarks/output_gaps.py --log gaps.log -- timm-tricks tune --space digits --num-samples 2 --epochs 4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def stamped_run(argv: list[str], log: Path) -> tuple[list[float], int]:
    """Run ``argv`` with stderr merged into stdout; write each line to ``log`` as ``seconds<TAB>line``; return
    the seconds of the lines, the exit time appended, and the exit status."""
    start = time.monotonic()
    times = []
    with open(log, "w") as out, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                 text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.monotonic() - start
            times.append(now)
            out.write(f"{now:8.2f}\t{line}")
            out.flush()
        status = proc.wait()
    times.append(time.monotonic() - start)
    return times, status


def gaps(times: list[float]) -> list[tuple[float, float]]:
    """``(gap, time it ended)`` between consecutive stamps, the first counted from 0, longest first."""
    marks = [0.0, *times]
    return sorted(((b - a, b) for a, b in zip(marks, marks[1:], strict=False)), reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", required=True, help="where to write the stamped lines")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    before = os.getloadavg()
    times, status = stamped_run(command, Path(args.log))
    after = os.getloadavg()
    longest = gaps(times)
    print(f"command: {' '.join(command)}")
    print(f"exit status {status}; {len(times) - 1} lines in {times[-1]:.1f} s")
    print("longest gaps (s, ending at s): " + ", ".join(f"{g:.1f} at {t:.1f}" for g, t in longest[:5]))
    print(f"load average (1, 5, 15 min): before {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}, "
          f"after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f} on {os.cpu_count()} CPUs")
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
