"""argparse for the commands that take paths (report, export, evaluate): a mistake is kdrun's one line."""

from __future__ import annotations

import argparse

from kdrun.core.errors import KdrunError


class OneLineParser(argparse.ArgumentParser):
    """argparse's usage errors as one KdrunError line (its usage folded in), not two lines of its own."""

    def error(self, message: str) -> None:
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        raise KdrunError(f"{self.prog.removeprefix('kdrun ')}: {message}; usage: {usage}")
