"""Packaging: what `pip install rlconform` gives a user who has no checkout. The wheel carries
the contract, the report schema, the PEP 561 marker and the framework install scripts, the
command runs from an empty directory, and the metadata (license, dependencies, extras, tox
environments) says what is true."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]

#: files the installed package reads at run time (contract_doc, compare, setup)
PACKAGE_DATA = ["conformance/contract.md", "conformance/report.schema.json", "conformance/py.typed",
                "conformance/adapters/verl_install.sh", "conformance/adapters/openrlhf_install.sh",
                "conformance/adapters/skyrl_install.sh"]


def test_report_schema_ships_as_an_identical_copy():
    docs, packaged = ROOT / "docs" / "report.schema.json", ROOT / "conformance" / "report.schema.json"
    assert docs.is_file() and packaged.is_file(), "docs/ and conformance/report.schema.json"
    assert docs.read_bytes() == packaged.read_bytes(), (
        "conformance/report.schema.json must be a copy of docs/report.schema.json: "
        "cp docs/report.schema.json conformance/report.schema.json")


def test_license_file_holds_the_apache_2_text_the_metadata_declares():
    text = (ROOT / "LICENSE").read_text()
    for words in ("Apache License", "Version 2.0, January 2004",
                  "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
                  "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS",
                  "rlconform contributors"):
        assert words in text, f"LICENSE lacks {words!r}: not the full Apache-2.0 text"
    assert PROJECT["license"] == "Apache-2.0" and "LICENSE" in PROJECT["license-files"]


def test_dependencies_and_extras_say_what_is_used_where():
    deps = " ".join(PROJECT["dependencies"])
    test = " ".join(PROJECT["optional-dependencies"]["test"])
    assert "hypothesis" in deps, "hypothesis is needed at run time (the thorough tier)"
    assert "hypothesis" not in test, "hypothesis is a run-time dependency; not again in the test extra"
    assert "jsonschema>=4" in deps, "compare validates reports with jsonschema"
    assert "import-linter>=2" in test
    from packaging.requirements import Requirement
    reqs = {Requirement(r).name: Requirement(r).specifier for r in PROJECT["dependencies"]}
    for name, pinned in (("transformers", ("5.10.4", "5.24.0")), ("tokenizers", ("0.22.2", "0.23.3"))):
        for version in pinned:          # what the verl and TRL environments pin (FRAMEWORKS.md)
            assert reqs[name].contains(version), f"{name}{reqs[name]} refuses {version}"
    build = PYPROJECT["build-system"]["requires"]
    assert any(r.replace(" ", "").startswith("setuptools>=") for r in build)
    assert any(r.startswith("setuptools>=") for r in PROJECT["optional-dependencies"]["test"]), (
        "the wheel test builds without build isolation: the test extra must bring the setuptools "
        f"that [build-system] requires ({build}); a fresh venv has an older one")
    assert PROJECT.get("classifiers"), "no classifiers"
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    listed = {f"{pkg.replace('.', '/')}/{pattern}" for pkg, patterns in data.items()
              for pattern in patterns}
    for path in ("conformance/contract.md", "conformance/report.schema.json", "conformance/py.typed",
                 "conformance/adapters/*.sh"):
        assert path in listed, f"{path} is not package data: {sorted(listed)}"


def test_the_slow_marker_has_its_tox_environment_and_the_default_run_leaves_it_out():
    import configparser
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    assert tox.has_section("testenv:slow"), "the slow marker names `tox -e slow`: tox.ini lacks it"
    assert "-m slow" in tox["testenv:slow"]["commands"]
    assert '-m "not slow"' in tox["testenv"]["commands"]
    assert "not slow" in PYPROJECT["tool"]["pytest"]["ini_options"]["addopts"]


def test_changelog_and_type_marker_exist():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and f"## [{PROJECT['version']}]" in changelog
    assert (ROOT / "conformance" / "py.typed").is_file()


# --- the wheel -------------------------------------------------------------------------------------

def _run(cmd, **kwargs):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300,
                          **kwargs)
    assert proc.returncode == 0, (f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n"
                                  f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def _source_copy(dest: Path) -> Path:
    """The project's sources, copied: building in place would leave build/ and egg-info in the
    working tree (and a stale build/lib could slip removed modules into the wheel)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    for package in ("refimpl", "conformance"):
        shutil.copytree(ROOT / package, dest / package, ignore=ignore)
    return dest


def test_the_wheel_installs_and_runs_from_an_empty_directory(tmp_path):
    """Build the wheel, install it without dependencies into a fresh environment that borrows
    this one's site-packages (torch and the rest) through a .pth file, and use it from an empty
    directory.

    Why the checkout cannot leak in: the .pth line appends this environment's site-packages to
    sys.path after the new environment's own, so the wheel's `conformance` is found first; and
    a directory added by a .pth line is not a site directory, so the .pth files inside it (among
    them the editable install's finder hook, __editable__.rlconform-*.pth) are not executed.
    PYTHONPATH is cleared. The first command asserts it: `conformance` comes from the wheel."""
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-q", "-w", wheels, _source_copy(tmp_path / "src")])        # an absolute path: a directory
    (wheel,) = wheels.glob("rlconform-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [p for p in PACKAGE_DATA if p not in names]
    assert not missing, f"the wheel lacks package data {missing}"

    env = tmp_path / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", env])
    python = env / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          "-q", wheel])
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                .stdout.strip())
    (site / "_rlconform_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    empty = tmp_path / "empty"
    empty.mkdir()
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    environ.update(PYTHONNOUSERSITE="1", PATH=f"{env / 'bin'}{os.pathsep}{environ.get('PATH', '')}")

    def run(*cmd):
        return _run(cmd, cwd=empty, env=environ)

    where = run(python, "-c", "import conformance, refimpl; print(conformance.__file__); "
                              "print(refimpl.__file__)").stdout.split()
    for f in where:
        assert Path(f).resolve().is_relative_to(env.resolve()), (
            f"{f} is not the wheel's copy in {env}: the checkout leaks into the test environment")
    for path in PACKAGE_DATA:
        assert (site / path).is_file(), f"the installed package lacks {path}"

    rlconform = env / "bin" / "rlconform"
    assert run(rlconform, "--version").stdout.strip() == f"rlconform {PROJECT['version']}"
    run(rlconform, "certify", "refimpl", "--out", "out", "-k", "dpo_loss/*", "-q")
    report = json.loads((empty / "out" / "refimpl.json").read_text())
    from conformance.contract import CONTRACT_VERSION
    assert report["complete"] and report["contract_version"] == CONTRACT_VERSION, report["summary"]
    run(rlconform, "compare", "out/refimpl.json", "--out", "cmp")     # the packaged schema
    explained = run(rlconform, "explain", "ppo_clip_loss/gradient-zero-when-clipped").stdout
    assert "Contract (docs/contract.md#" in explained and "## Losses on tokens" in explained, (
        f"explain does not quote the packaged contract:\n{explained[:1500]}")
    setup = run(rlconform, "setup", "verl", "--dry-run").stdout
    script = next(w for w in setup.split() if w.endswith("verl_install.sh"))
    assert Path(script).is_file() and Path(script).resolve().is_relative_to(env.resolve()), setup
