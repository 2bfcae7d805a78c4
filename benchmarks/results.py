"""benchmarks/RESULTS.md: one section per benchmark or chaos scenario, each rewritten by its run.

A section says where and when it was measured (host, cores, memory, load, commit, date), the
command that produced it, and one table row per figure: value, target and verdict. Sections of
other scripts are kept, so `make bench` and `make chaos` fill one page between them.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = (
    "# Benchmark and chaos results\n\n"
    "Written by `make bench` and `make chaos` (benchmarks/results.py); each section is replaced by\n"
    "the next run of its script. Figures from a loaded machine are pessimistic: each section gives\n"
    "the load average when it was written.\n"
)


@dataclass(frozen=True)
class Row:
    figure: str
    value: str
    target: str = ""
    verdict: str = ""  # "met", "NOT met", "info", or a short explanation

    @classmethod
    def none(cls, figure: str, count: int) -> Row:
        """A count whose target is 0 (problems found)."""
        return cls(figure, str(count), "0", verdict(count == 0))


def verdict(ok: bool | None) -> str:
    return "info" if ok is None else ("met" if ok else "NOT met")


def machine() -> str:
    from harness import code_version

    try:
        load = "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    except OSError:
        load = "?"
    try:
        with open("/proc/meminfo") as meminfo:
            total_kb = int(meminfo.readline().split()[1])
        memory = f"{total_kb / 1048576:.0f} GiB"
    except (OSError, ValueError, IndexError):
        memory = "?"
    return (
        f"{platform.node()}, {os.cpu_count()} cores, {memory}, load {load}, "
        f"Python {platform.python_version()}, commit {code_version() or '?'}"
    )


def database_name() -> str:
    """The database the service ran on (harness.Service puts its URL in DATABASE_URL)."""
    return "PostgreSQL" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "SQLite"


def p50_p95(summary: dict) -> str:
    """`p50 / p95 ms` of a harness.summary_ms."""
    return f"{summary['p50']:.1f} / {summary['p95']:.1f} ms"


def write_section(title: str, rows: list[Row], *, command: str | None = None, notes: str = "") -> None:
    """Replace the section `## title` of RESULTS.md (or append it) with these rows."""
    command = command or " ".join(shlex.quote(arg) for arg in [Path(sys.executable).name, *sys.argv])
    database = database_name()
    lines = [
        f"## {title}",
        "",
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {machine()}, database {database}",
        f"- Command: `{command}`",
        "",
        "| Figure | Value | Target | Verdict |",
        "|---|---|---|---|",
        *(f"| {r.figure} | {r.value} | {r.target or '-'} | {r.verdict or '-'} |" for r in rows),
    ]
    if notes:
        lines += ["", notes.strip()]
    section = "\n".join(lines) + "\n"
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text.rstrip("\n") + "\n")
