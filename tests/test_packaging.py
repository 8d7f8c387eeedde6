"""`pip install .` (not editable) carries the configs: the wheel holds every module and
configs/ as repro.configs, and installed away from the checkout, the configs that
report, ablations and bench look up resolve there and load. No network: the wheel is
built with the setuptools already installed, and installed with --no-deps --no-index."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from repro.config import load_config, packaged_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
# What the build reads: pyproject.toml, the README it names, and the folders it packages.
SOURCES = ("pyproject.toml", "README.md", "repro", "data_prep", "configs")


def pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the folder it is installed in). Built from a copy: a build in the
    checkout would leave build/ and *.egg-info there."""
    tmp = tmp_path_factory.mktemp("packaging")
    (tmp / "src").mkdir()
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp / "src" / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tmp / "src" / name)
    pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"),
        str(tmp / "src"))
    (wheel,) = (tmp / "dist").glob("*.whl")
    pip("install", "--no-deps", "--no-index", "--target", str(tmp / "site"), str(wheel))
    return wheel, tmp / "site"


def files_under(top: Path, folder: str, pattern: str) -> set[str]:
    """`pattern` files in top/folder and below, as paths relative to top."""
    return {p.relative_to(top).as_posix() for p in (top / folder).rglob(pattern)
            if "__pycache__" not in p.parts}


def test_the_wheel_holds_every_module_and_config(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = files_under(ROOT, "repro", "*.py") | files_under(ROOT, "data_prep", "*.py")
    assert {"repro/config.py", "data_prep/tarindex.py"} <= modules
    assert modules - names == set()          # a package missing from pyproject's list shows here
    shipped = {f"repro/{name}" for name in files_under(ROOT, "configs", "*.yaml")}
    assert {"repro/configs/alexnet_paper.yaml", "repro/configs/ablations/no_lrn.yaml"} <= shipped
    assert shipped - names == set()


# Run by the installed package, from a folder outside the checkout.
LOOKUPS = r"""
import json
import repro
from repro.ablations import ABLATIONS_DIR, CLAIMS, config_path
from repro.bench import CONFIG
from repro.config import load_config, packaged_config
from repro.report import PAPER_CONFIG

print(json.dumps({
    "repro": repro.__file__,
    "paths": [str(p) for p in (PAPER_CONFIG, CONFIG, packaged_config("alexnet_paper"), ABLATIONS_DIR,
                               *map(config_path, CLAIMS))],
    "paper": load_config(PAPER_CONFIG).to_dict(),
    "by_name": load_config("alexnet_paper").to_dict(),
    "ablations": {p.stem: load_config(p).to_dict() for p in ABLATIONS_DIR.glob("*.yaml")},
}))
"""


def test_the_installed_configs_resolve_and_load_outside_the_checkout(installed, tmp_path):
    _, site = installed
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", LOOKUPS], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.splitlines()[-1])
    assert Path(got["repro"]).is_relative_to(site)   # the installed copy, not the checkout
    for path in map(Path, got["paths"]):
        assert path.is_relative_to(site / "repro" / "configs") and path.exists(), path
    paper = load_config(CONFIGS / "alexnet_paper.yaml").to_dict()
    assert got["paper"] == got["by_name"] == paper
    assert got["ablations"] == {p.stem: load_config(p).to_dict()
                                for p in (CONFIGS / "ablations").glob("*.yaml")}


def test_in_the_checkout_the_packaged_configs_are_the_checkouts():
    """The editable install (and the tests) read configs/ itself, not a copy."""
    assert packaged_config("alexnet_paper") == CONFIGS / "alexnet_paper.yaml"
    assert packaged_config("ablations/no_lrn.yaml") == CONFIGS / "ablations" / "no_lrn.yaml"
    assert packaged_config("ablations") == CONFIGS / "ablations"
