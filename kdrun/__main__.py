"""`python -m kdrun` is the same as the `kdrun` command."""

from kdrun.cli import main

raise SystemExit(main())
