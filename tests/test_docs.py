"""The docs say what kdrun does: every command shown composes, the configuration reference covers the
schemas and config groups, the package map covers the package, and the site builds strictly.

Commands are checked in-process with the CLI's own preflight (no training, no subprocess per command);
a few run through the real CLI with `--cfg job`. Commands that are meant to fail (the bad-input examples)
sit between `<!-- docs-test: errors -->` and `<!-- docs-test: end -->`: for those, an error that preflight
raises must be the one the docs show.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import HANG_GUARD, kdrun

from kdrun.cli import COMMANDS
from kdrun.core.errors import KdrunError
from kdrun.report.published import published_row
from kdrun.run.config import SCHEMAS, register_schemas
from kdrun.run.preflight import check_overrides
from kdrun.run.presets import expand_presets

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
CONFIGURATION = DOCS / "configuration.md"
ARCHITECTURE = DOCS / "architecture.md"

ERRORS_START, ERRORS_END = "<!-- docs-test: errors -->", "<!-- docs-test: end -->"
FENCE = re.compile(r"^([ \t]*)(```+|~~~+)(.*?)\n(.*?)^\1\2\s*$", re.M | re.S)
INLINE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
# `kdrun <cmd>`, `python -m kdrun <cmd>`, `torchrun ... -m kdrun <cmd>`; not `python -m kdrun.bench`.
START = re.compile(r"^(?:\$\s+)?(?:kdrun\s|python3?\s+-m\s+kdrun\s|torchrun\s.*?-m\s+kdrun\s)")
PLACEHOLDER = re.compile(r"<[^<>]*>|\.\.\.|…")
FLAGS = ("--help", "-h")


@dataclass
class Shown:
    """One command as the docs show it."""

    page: str
    text: str  # the command line, continuations joined, comment dropped
    expect_error: bool  # inside an errors region
    message: str | None = None  # the error the docs show for it, if any

    @property
    def words(self) -> list[str]:
        words = shlex.split(self.text, comments=True)
        if words and words[0] == "$":
            words = words[1:]
        at = next(i for i, w in enumerate(words) if w == "kdrun")  # `kdrun`, `-m kdrun`
        return words[at + 1:]


def _regions(text: str) -> list[tuple[int, int]]:
    """Character spans of the errors regions."""
    return [(m.start(), m.end()) for m in re.finditer(re.escape(ERRORS_START) + r".*?" + re.escape(ERRORS_END), text, re.S)]


def _inside(position: int, regions: list[tuple[int, int]]) -> bool:
    return any(start <= position < end for start, end in regions)


def _error_after(lines: list[str], index: int) -> str | None:
    """The `kdrun: error: ...` line shown right after a `$ kdrun ...` line, if any."""
    following = lines[index + 1] if index + 1 < len(lines) else ""
    return following.split("kdrun: error: ", 1)[1].strip() if following.startswith("kdrun: error: ") else None


def _table_message(text: str, position: int) -> str | None:
    """The last cell of the table row holding `position`: the bad-input table's message column."""
    start = text.rfind("\n", 0, position) + 1
    end = text.find("\n", position)
    row = text[start:end if end >= 0 else None]
    if not row.startswith("|"):
        return None
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]
    return cells[-1].replace("\\|", "|") if len(cells) >= 3 else None


def shown_commands() -> list[Shown]:
    found = []
    for path in PAGES:
        text = path.read_text(encoding="utf-8")
        page = str(path.relative_to(ROOT))
        regions = _regions(text)
        fenced = []
        for block in FENCE.finditer(text):
            fenced.append((block.start(), block.end()))
            if block.group(3).strip() not in ("", "bash", "sh", "shell", "console", "text"):
                continue
            lines = re.sub(r"\\\n\s*", " ", block.group(4)).splitlines()
            for index, line in enumerate(lines):
                line = line.strip()
                if START.match(line):
                    error = _inside(block.start(), regions)
                    found.append(Shown(page, line, error, _error_after(lines, index) if error else None))
        prose = text
        for start, end in reversed(fenced):  # inline code only outside fenced blocks
            prose = prose[:start] + " " * (end - start) + prose[end:]
        for span in INLINE.finditer(prose):
            code = " ".join(span.group(2).split())
            if START.match(code):
                error = _inside(span.start(), regions)
                found.append(Shown(page, code, error, _table_message(prose, span.start()) if error else None))
    return found


SHOWN = shown_commands()


def _overrides(words: list[str]) -> list[str]:
    """What the CLI hands preflight (kdrun.cli.main): `key=value`, `~key`, `+key=`; no flags, no `--cfg job`."""
    return [w for w in words if ("=" in w or w.startswith("~")) and not w.startswith("-")]


def _check(shown: Shown) -> None:
    """Compose one command the way the CLI does before it runs anything; raise KdrunError if it would refuse it."""
    words = shown.words
    assert words, f"{shown.page}: `{shown.text}` names no command"
    name = words[0]
    if name in FLAGS:
        return
    assert name in COMMANDS, f"{shown.page}: `{shown.text}`: unknown command '{name}'; kdrun has {', '.join(COMMANDS)}"
    command = COMMANDS[name]
    if command.config_name is None:  # `kdrun report PATH...`: paths, not overrides; `kdrun reproduce ROW`: a row
        if name == "reproduce" and len(words) > 1:
            published_row(words[1])
        return
    overrides = _overrides(words[1:])
    if any(o.startswith("resume=") for o in overrides):  # the run dir's own overrides are used; the path is an example
        return
    check_overrides(command.config_name, expand_presets(command.config_name, overrides))


def _checkable(shown: Shown) -> bool:
    words = shown.words
    if not words or PLACEHOLDER.search(words[0]):  # `kdrun <command> ...`
        return False
    resuming = any(w.startswith("resume=") for w in words)
    return resuming or not PLACEHOLDER.search(" ".join(words))


@pytest.fixture(scope="module", autouse=True)
def schemas():
    register_schemas()


def test_the_docs_show_many_commands():
    """A broken extractor must not pass vacuously."""
    commands = CHECKABLE
    assert len(commands) >= 100, f"only {len(commands)} checkable commands found in the docs"
    assert {s.page for s in commands} >= {"README.md", "docs/getting-started.md", "docs/sweeps.md", "docs/methods.md"}
    assert sum(s.expect_error for s in SHOWN) >= 40, "the bad-input examples were not found"
    skipped = [s for s in SHOWN if not _checkable(s)]
    assert len(skipped) <= len(SHOWN) // 5, f"too many commands with placeholders: {[s.text for s in skipped]}"


CHECKABLE = [s for s in SHOWN if not s.expect_error and _checkable(s)]


@pytest.mark.parametrize("shown", CHECKABLE, ids=[f"{s.page}:{i}" for i, s in enumerate(CHECKABLE)])
def test_every_command_shown_composes(shown):
    try:
        _check(shown)
    except KdrunError as error:
        pytest.fail(f"{shown.page}: `{shown.text}` is refused by kdrun: {error}")


def _same_message(shown: str, actual: str) -> bool:
    """The docs may shorten a message with `...`/`…` and paths; what they show must be what kdrun says."""
    parts = [p.strip(" ;,") for p in re.split(r"\.\.\.|…", shown) if p.strip(" ;,")]
    position = 0
    for part in parts:
        found = actual.find(part, position)
        if found < 0:
            return False
        position = found + len(part)
    return bool(parts) and actual.startswith(parts[0])


def test_errors_shown_are_the_errors_kdrun_gives():
    """A bad-input example either passes preflight (its error comes later, in the run) or fails it as shown."""
    checked, wrong = 0, []
    for shown in (s for s in SHOWN if s.expect_error and s.message and _checkable(s)):
        try:
            _check(shown)
        except KdrunError as error:
            checked += 1
            if not _same_message(shown.message, str(error)):
                wrong.append(f"{shown.page}: `{shown.text}`\n  docs: {shown.message}\n  kdrun: {error}")
    assert not wrong, "error messages in the docs that differ from kdrun's:\n" + "\n".join(wrong)
    assert checked >= 15, f"only {checked} bad-input examples were checked against preflight"


def _runnable(name: str) -> Shown:
    """The first plain command of this name the docs show (no sweep, no resume, no placeholder)."""
    return next(s for s in SHOWN if not s.expect_error and _checkable(s) and s.words[0] == name
                and len(s.words) > 1 and "-m" not in s.words and not any("resume=" in w for w in s.words))


@pytest.mark.parametrize("name", ["distill", "train-teacher", "train-student"])
def test_commands_shown_run_through_the_cli(name, tmp_path):
    shown = _runnable(name)
    args = [w for w in shown.words if w not in ("--cfg", "job")]
    result = kdrun(tmp_path, *args, "--cfg", "job", env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, f"`{shown.text} --cfg job`: {result.stderr[-2000:]}"
    assert f"command: {name.replace('-', '_')}" in result.stdout


# The configuration reference ------------------------------------------------------------------------------------

def _keys(schema: type, prefix: str = "") -> list[str]:
    """Every key of a schema, nested dataclasses flattened (`teacher.train.optim.lr`); dicts (kwargs, loss) are one key."""
    hints = typing.get_type_hints(schema)
    keys = []
    for field in dataclasses.fields(schema):
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            keys += _keys(kind, f"{prefix}{field.name}.")
        else:
            keys.append(f"{prefix}{field.name}")
    return keys


def _code_spans(path: Path) -> set[str]:
    return {" ".join(m.group(2).split()) for m in INLINE.finditer(path.read_text(encoding="utf-8"))}


def test_every_schema_key_is_in_the_configuration_reference():
    documented = _code_spans(CONFIGURATION)
    keys = sorted({key for schema in SCHEMAS.values() for key in _keys(schema)})
    assert len(keys) >= 50 and "teacher.train.optim.lr" in keys and "dataset.val_split" in keys
    missing = [key for key in keys if key not in documented]
    assert not missing, f"keys missing from docs/configuration.md (as `key`): {', '.join(missing)}"


def _config_groups() -> dict[str, list[str]]:
    conf = ROOT / "conf"
    groups = {}
    for folder in sorted(p for p in conf.rglob("*") if p.is_dir()):
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if options:
            groups[folder.relative_to(conf).as_posix()] = options
    return groups


def test_every_config_group_and_option_is_in_the_configuration_reference():
    text = CONFIGURATION.read_text(encoding="utf-8")
    documented = _code_spans(CONFIGURATION)
    groups = _config_groups()
    assert {"dataset", "teacher", "student", "optim", "loss", "experiment", "hparams_search", "hydra/launcher"} <= set(groups)
    missing = []
    for group, options in groups.items():
        if not re.search(rf"^#+ `{re.escape(group)}`\s*$", text, re.M):
            missing.append(f"a section `### `{group}`` for the group {group}")
        missing += [f"{group}={option}" for option in options if option not in documented]
    assert not missing, "missing from docs/configuration.md: " + ", ".join(missing)


# The package map ------------------------------------------------------------------------------------------------

def _package_map() -> dict[str, str]:
    """The map's tree block: package (`run/`, or `` for kdrun/ itself) -> the text of its entry."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    block = next(m.group(4) for m in FENCE.finditer(text) if m.group(4).startswith("kdrun/\n"))
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines()[1:]:
        entry = re.match(r"^  (\S.*?)\s{2,}(.*)$", line)
        if line.startswith("  ") and not line.startswith("   ") and entry:
            name = entry.group(1)
            current = name if name.endswith("/") else ""
            entries[current] = entries.get(current, "") + " " + (name if current == "" else "") + " " + entry.group(2)
        elif line.startswith("   ") and current is not None:
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def _package_tree() -> dict[str, set[str]]:
    """What the package holds: package (`run/`, `` for kdrun/) -> its modules (no __init__.py)."""
    package = ROOT / "kdrun"
    tree = {"": {p.name for p in package.glob("*.py") if p.name != "__init__.py"}}
    for init in sorted(package.glob("*/__init__.py")):
        tree[f"{init.parent.name}/"] = {p.name for p in init.parent.glob("*.py") if p.name != "__init__.py"}
    assert not list(package.glob("*/*/__init__.py")), "the map has one level of packages; extend _package_tree"
    return tree


def test_the_package_map_names_every_package_and_module():
    entries, tree = _package_map(), _package_tree()
    missing = [f"kdrun/{package}" for package in tree if package not in entries]
    for package, modules in tree.items():
        named = set(re.findall(r"[\w]+\.py\b", entries.get(package, "")))
        missing += [f"kdrun/{package}{module}" for module in sorted(modules - named)]
    assert not missing, "not in the package map of docs/architecture.md: " + ", ".join(missing)


def test_the_package_map_names_only_what_exists():
    entries, tree = _package_map(), _package_tree()
    stale = [f"kdrun/{package}" for package in entries if package not in tree]
    for package, text in entries.items():
        named = set(re.findall(r"[\w]+\.py\b", text))
        stale += [f"kdrun/{package}{module}" for module in sorted(named - tree.get(package, set()))]
    text = ARCHITECTURE.read_text(encoding="utf-8")
    stale += [path for path in sorted(set(re.findall(r"\bkdrun/(?:\w+/)*\w+\.py\b", text))) if not (ROOT / path).is_file()]
    assert not stale, "named in docs/architecture.md but not in the package: " + ", ".join(stale)


# The site ---------------------------------------------------------------------------------------------------------

def test_the_site_builds_strictly(tmp_path):
    """What `make docs` runs: a broken link or anchor, or a page missing from the nav, fails it."""
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    nav = set(re.findall(r":\s*([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), re.M))
    assert pages == nav, f"pages not in mkdocs.yml's nav: {sorted(pages - nav)}; nav without page: {sorted(nav - pages)}"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
