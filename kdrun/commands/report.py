"""`kdrun report PATH...`: summarise finished runs and sweeps as a table, CSV, Markdown and plots.

A plain command: it takes paths, not Hydra overrides, so argparse reads its arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdrun.report import make_report, show_report


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="kdrun report", description="Summarise finished runs: one row per setting, seeds aggregated "
        "(mean ± sample std); writes report.csv, report.md, acc_vs_T.png and acc_vs_latency.png.")
    result.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="run or sweep directories (searched recursively for summary.json)")
    result.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where the files go (default: the first PATH)")
    return result


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    show_report(make_report([p.expanduser().resolve() for p in args.paths],
                            args.out.expanduser().resolve() if args.out else None))
    return 0
