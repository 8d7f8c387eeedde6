"""PAPER_NOTES.md's table points at real things: every test it names exists, and every
config key it names is a key of the config."""
import re
from pathlib import Path

from repro.config import load_config

ROOT = Path(__file__).parent.parent


def table_rows():
    text = (ROOT / "PAPER_NOTES.md").read_text()
    table = text.split("## Detail -> config key -> code -> test")[1].split("\n## ")[0]
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 4 and not set(cells[0]) <= set("-") \
                and cells[0] != "paper detail":
            yield cells


def test_every_named_test_exists():
    named, current = 0, None     # "::name" refers to the last file named, rows above too
    for detail, _, _, tests in table_rows():
        for file, name in re.findall(r"(?:(test_\w+\.py))?::(test_\w+)", tests):
            current = file or current
            assert current, f"{detail!r}: ::{name} without a test file before it"
            source = (ROOT / "tests" / current).read_text()
            assert re.search(rf"^def {name}\(", source, re.M), f"{current}::{name} (for {detail!r})"
            named += 1
    assert named > 40


def test_every_named_config_key_exists():
    config = load_config(ROOT / "configs" / "alexnet_paper.yaml").to_dict()
    named = 0
    for detail, keys, _, _ in table_rows():
        for section, key in re.findall(r"`(\w+)\.(\w+)`", keys):
            if section in config:
                assert key in config[section], f"{section}.{key} (for {detail!r})"
                named += 1
    assert named > 20


def test_every_named_function_exists():
    named = 0
    for detail, _, code, _ in table_rows():
        for path, name in re.findall(r"([\w/]+\.py)::(\w+)", code):
            files = [ROOT / path] if "/" in path else [ROOT / d / path for d in ("repro", "data_prep")]
            sources = [f.read_text() for f in files if f.is_file()]
            assert sources, f"{path} (for {detail!r})"
            assert any(re.search(rf"^\s*(def|class) {name}\b|^{name} = ", s, re.M) for s in sources), \
                f"{path}::{name} (for {detail!r})"
            named += 1
    assert named > 10
