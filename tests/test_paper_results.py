"""docs/paper_results.md stays runnable: every command in it parses with the project's own
argument parsers, every config it names loads, every test it names exists."""
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


def test_every_named_test_exists():
    current = None
    for file, name in re.findall(r"(?:(test_\w+\.py))?::(test_\w+)", DOC.read_text()):
        current = file or current
        source = (ROOT / "tests" / current).read_text()
        assert re.search(rf"^def {name}\(", source, re.M), f"{current}::{name}"
    for file in set(re.findall(r"`(test_\w+\.py)`", DOC.read_text())):
        assert (ROOT / "tests" / file).is_file(), file
