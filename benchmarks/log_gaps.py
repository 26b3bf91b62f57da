"""The longest silence of a command: run it with stdout and stderr merged into one pipe (as ``cmd >log 2>&1`` or a
batch scheduler's log file sees it), stamp every line with the seconds since the command started, and report the
longest gap between two lines (the first gap counted from the start, the last to the exit).

Issue 14 item 1's check of the trainer's progress lines::

    python benchmarks/log_gaps.py --log /tmp/gaps.log -- \\
        timm-tricks train --recipe digits --epochs 1 --set data.image_size=96 --output /tmp/gaps-run

prints the stamped lines as they come, then one summary line: the longest gap, where it ended, the exit status
and the 1-minute load average at the start and at the end (``os.getloadavg``), since a loaded machine stretches
every gap.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def stamp(command: list[str], log: str | None = None) -> dict[str, float | int | str]:
    """Run ``command``; return the longest gap (seconds) between its output lines, the line that ended it, the
    exit status and the load averages."""
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    last, worst, worst_line = 0.0, 0.0, "(start)"
    out = open(log, "w") if log else None  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    assert proc.stdout is not None
    buffered = b""
    while True:
        chunk = proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(1)
        now = time.monotonic() - start
        if not chunk:
            break
        buffered += chunk.replace(b"\r", b"\n")  # a tqdm bar's redraws count as lines
        *lines, buffered = buffered.split(b"\n")
        for raw in lines:
            text = raw.decode(errors="replace")
            if now - last > worst:
                worst, worst_line = now - last, text
            last = now
            row = f"{now:8.2f} {text}"
            print(row, flush=True)
            if out:
                out.write(row + "\n")
    rc = proc.wait()
    end = time.monotonic() - start
    if end - last > worst:
        worst, worst_line = end - last, "(exit)"
    if out:
        out.close()
    return {"max_gap_s": round(worst, 2), "gap_ended_by": worst_line[:100], "seconds": round(end, 1),
            "exit_status": rc, "load_1m_before": load_before, "load_1m_after": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--log", help="also write the stamped lines here")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command after --")
    result = stamp(command, args.log)
    print("log_gaps: " + "  ".join(f"{k} {v}" for k, v in result.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
