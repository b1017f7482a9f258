"""`python -m kdrun` and the `kdrun` command: the CLI, with a Ctrl-C while it is still loading ending quietly."""

import sys


def run() -> int:
    try:
        from kdrun.cli import main
    except KeyboardInterrupt:
        print("kdrun: interrupted while starting; nothing was written", file=sys.stderr, flush=True)
        return 130
    return main()


if __name__ == "__main__":
    raise SystemExit(run())
