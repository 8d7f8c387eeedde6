"""docs/paper_results.md stays runnable: every command in it parses with the project's own
argument parsers, every config it names loads, every row names the tests behind it and they exist."""
import importlib
import re
import shlex
from pathlib import Path

import pytest

from repro import bench, cli
from repro.config import load_config

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "paper_results.md"


def commands() -> list[str]:
    """The commands in code blocks (a line each) and in `inline code` (a span each)."""
    text = DOC.read_text()
    blocks = re.findall(r"```\n(.*?)```", text, re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return sorted({c for c in spans + lines if c.startswith(("repro ", "python -m "))})


def parse(command: str):
    """argparse's namespace for a documented command (SystemExit if it does not parse)."""
    argv = shlex.split(command)
    if argv[:2] == ["repro", "bench"]:
        return bench.parser().parse_args(argv[2:])
    if argv[0] == "repro":
        return cli.parser().parse_args(argv[1:])
    module = importlib.import_module(argv[2])           # python -m MODULE ...
    if hasattr(module, "__path__"):                      # a package: its __main__
        module = importlib.import_module(f"{argv[2]}.__main__")
    return module.parser().parse_args(argv[3:])


def test_the_index_covers_every_section_with_results():
    text = DOC.read_text()
    for heading in ("Tables 1 and 2 (section 6)", "Architecture and its parts (section 3)",
                    "Overfitting (section 4)", "Training (section 5)",
                    "Qualitative evaluations (section 6.1)", "Depth (section 7)",
                    "CIFAR-10 (sections 3.1 and 3.3)"):
        assert f"## {heading}" in text, heading
    assert len(commands()) > 30


@pytest.mark.parametrize("command", commands())
def test_every_command_parses_and_its_config_loads(command):
    args = parse(command)
    config = getattr(args, "config", None)
    if config is not None:
        load_config(ROOT / config, getattr(args, "overrides", []))


def result_rows() -> list[dict[str, str]]:
    """The rows of the results tables (those with a test column), as {column: cell}."""
    rows, header = [], None
    for line in DOC.read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set("-") and "test" in header:
            rows.append(dict(zip(header, cells)))
    return rows


def test_every_row_names_its_tests_and_they_exist():
    """A row with a command names at least one test (a file, or file::test; `::test` is
    the file named before it in the cell); a row without one (a result not provided) says
    "-"; every test named exists."""
    rows = result_rows()
    assert len(rows) > 25
    for row in rows:
        named = re.findall(r"`([^`]*)`", row["test"])
        if "`" not in row["command"]:
            assert row["test"] == "-", row["result"]
            continue
        assert named, f"no test for {row['result']!r}"
        current = None
        for item in named:
            m = re.fullmatch(r"(test_\w+\.py)?(?:::(test_\w+))?", item)
            assert m and any(m.groups()), f"{item!r} is not test_FILE.py[::test_NAME] ({row['result']!r})"
            current = m[1] or current
            assert current and (ROOT / "tests" / current).is_file(), f"{item} ({row['result']!r})"
            if m[2]:
                source = (ROOT / "tests" / current).read_text()
                assert re.search(rf"^def {m[2]}\(", source, re.M), f"{current}::{m[2]}"
