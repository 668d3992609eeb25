"""setup.cfg (for EL 9's setuptools 53, packaging/rpm/numahook.spec) says what pyproject.toml
says: the RPM built on EL 9 must be the same package as everywhere else.

scripts/check-rpm-spec goes further: it builds with setuptools 53 from setup.cfg and
compares the metadata it wrote with the wheel's.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the 3.9 run skips this file

REPO = Path(__file__).resolve().parents[2]


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.strip().splitlines() if ln.strip()]


def _req(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_setup_cfg_mirrors_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(REPO / "setup.cfg")
    meta, opts = cfg["metadata"], cfg["options"]
    assert meta["name"] == project["name"]
    assert meta["version"] == project["version"]
    assert meta["description"] == project["description"]
    assert meta["long_description"] == f"file: {project['readme']}"
    assert meta["license"] == project["license"]["text"]
    assert meta["author"] == project["authors"][0]["name"]
    assert _lines(meta["classifiers"]) == project["classifiers"]
    assert opts["python_requires"] == project["requires-python"]
    assert sorted(map(_req, _lines(opts["install_requires"]))) == sorted(
        map(_req, project["dependencies"]))
    extras = {k: sorted(map(_req, _lines(v))) for k, v in cfg["options.extras_require"].items()}
    assert extras == {k: sorted(map(_req, v))
                      for k, v in project["optional-dependencies"].items()}
    scripts = {k: v.strip() for k, v in (ln.split("=", 1) for ln in
                                         _lines(cfg["options.entry_points"]["console_scripts"]))}
    assert {k.strip(): v for k, v in scripts.items()} == project["scripts"]
    assert opts["packages"] == "find:"
    assert _lines(cfg["options.packages.find"]["include"]) == tool["packages"]["find"]["include"]
    assert _lines(meta["license_files"]) == ["LICENSE"] and (REPO / "LICENSE").is_file()


def test_license_is_apache_2_as_declared() -> None:
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "License: Apache-2.0" in (REPO / "packaging/debian/copyright").read_text()
    spec = (REPO / "packaging/rpm/numahook.spec").read_text()
    assert re.search(r"^License:\s+Apache-2.0$", spec, re.M)
    assert re.search(r"^%license LICENSE$", spec, re.M)
