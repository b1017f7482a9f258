"""`kdrun report PATH...`: summarise finished runs and sweeps as a table, CSV, Markdown and plots.

A plain command: it takes paths, not Hydra overrides, so argparse reads its arguments.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from kdrun.commands.arguments import OneLineParser
from kdrun.report import make_report, show_report


def parser() -> argparse.ArgumentParser:
    result = OneLineParser(
        prog="kdrun report", description="Summarise finished runs: one row per setting, seeds aggregated "
        "(mean ± sample std); writes report.csv, report.md, acc_vs_T.png and acc_vs_latency.png.")
    result.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="run or sweep directories (searched recursively for summary.json)")
    result.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where the files go (default: PATH itself for one PATH; for several, a new "
                             "outputs/report/<time>, so no sweep's own report is overwritten by a mixed one)")
    return result


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    paths = [p.expanduser().resolve() for p in args.paths]
    show_report(make_report(paths, args.out.expanduser().resolve() if args.out else default_out(paths)))
    return 0


def default_out(paths: list[Path]) -> Path | None:
    """One PATH: its own folder (make_report's default). Several: a report of their own, beside no one's."""
    if len(paths) == 1:
        return None
    return Path("outputs", "report", datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")).resolve()
