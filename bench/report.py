"""Collect the ``RESULT`` lines of a ``make bench`` run into ``bench/RESULTS.md`` (not a benchmark itself).

Each bench script prints its headline figures with :func:`common.emit_result`; under ``make bench`` they
are also appended to ``BENCH_RESULTS_FILE`` (one JSON object a line). This script reads that file (or
scripts' captured stdout: any line starting ``RESULT ``) and writes a Markdown report: every figure beside
its baseline and the ratio, the goal and whether this run met it, the scripts that failed, and the
machine (cores, memory, CPU model, load average) and the date.

    .venv/bin/python bench/report.py bench/results/results.jsonl [--failed "bench/x.py ..."] \\
        [--out bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def read_results(paths: list[Path]) -> list[dict[str, Any]]:
    """The RESULT objects of each file in order (JSON lines, or ``RESULT {json}`` lines of a log)."""
    results = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            text = line.removeprefix("RESULT ").strip()
            if text.startswith("{"):
                try:
                    results.append(json.loads(text))
                except ValueError:
                    continue
    return results


def machine() -> dict[str, str]:
    """Cores, memory, CPU model, load average, Python, the commit."""
    info = {"cores": str(os.cpu_count()), "memory": "?", "cpu": platform.processor() or "?",
            "python": platform.python_version(), "system": f"{platform.system()} {platform.release()}",
            "load": " / ".join(f"{x:.2f}" for x in os.getloadavg())}
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory"] = f"{int(line.split()[1]) / 1024 ** 2:.1f} GiB"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                        text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = "?"
    return info


def _num(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if value == float("inf"):
        return "∞ (due runs not started)"
    number = f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{number} {unit}".strip()


def _met(value: Any) -> str:
    return {True: "yes", False: "**no**", None: "—"}[value]


def render(results: list[dict[str, Any]], failed: list[str], info: dict[str, str], when: datetime) -> str:
    met = [r for r in results if r.get("met") is not None]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` (`bench/report.py`) on {when:%Y-%m-%d %H:%M} UTC, commit {info['commit']}.",
        f"Machine: {info['cores']} cores ({info['cpu']}), {info['memory']} memory, {info['system']}, "
        f"Python {info['python']}; load average when the report was written {info['load']} "
        "(a shared machine: other sessions' work competes for the cores, so figures vary between runs).",
        "",
        f"Goals met: {sum(1 for r in met if r['met'])} of {len(met)}."
        + (f" Scripts that failed: {', '.join(f'`{f}`' for f in failed)}." if failed else ""),
        "",
        "| benchmark | figure | baseline | ratio | goal | met | script |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        baseline = _num(r.get("baseline"), r.get("unit", ""))
        if r.get("baseline_label") and r.get("baseline") is not None:
            baseline += f" ({r['baseline_label']})"
        name = r["name"] + (f" — {r['note']}" if r.get("note") else "")
        ratio = r.get("ratio")
        ratio = "—" if ratio is None else "—" if ratio == float("inf") else f"{_num(ratio)}×"
        lines.append(f"| {name} | {_num(r.get('figure'), r.get('unit', ''))} | {baseline} | {ratio} | "
                     f"{r.get('goal') or '—'} | {_met(r.get('met'))} | `{r.get('script', '?')}` |")
    lines += ["", "Each script's full output (and its JSON under `bench/results/`) has the details; the README's "
              "Benchmarks section explains each benchmark.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="results.jsonl files or captured script output")
    parser.add_argument("--failed", default="", help="space-separated scripts that exited non-zero")
    parser.add_argument("--out", type=Path, help="write here (default: stdout)")
    args = parser.parse_args()
    results = read_results([p for p in args.inputs if p.exists()])
    text = render(results, args.failed.split(), machine(), datetime.now(UTC))
    if args.out:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out} ({len(results)} figures)")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
