"""The architecture's rules are executable (import-linter contracts in pyproject.toml, run here
as ``lint-imports``): refimpl imports nothing of the harness; adapters import only the contract
and the adapter helpers; checks never import adapters; nothing imports the benchmarks; the harness
is layered without cycles."""

import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, config: Path | None = None, pythonpath: Path | None = None):
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(pythonpath or cwd)}
    cmd = [str(LINT), "--no-cache"] + ([str(config)] if config else [])
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_the_import_contracts_hold():
    proc = _lint(ROOT)
    assert proc.returncode == 0, ("an import breaks the architecture's rules (pyproject.toml, "
                                  "[tool.importlinter]):\n" + proc.stdout[-3000:] + proc.stderr)
    assert "0 broken" in proc.stdout, proc.stdout


def _toy(text):
    """Toy names for the root packages (the editable install's finder would otherwise resolve
    ``conformance`` to this checkout, whatever PYTHONPATH says)."""
    if isinstance(text, list):
        return [_toy(t) for t in text]
    for root in ("refimpl", "conformance", "benchmarks"):
        text = text.replace(root, "toy" + root)
    return text


def _toy_project(tmp_path: Path, refimpl_imports: str, adapter_imports: str, checks_import: str):
    """The project's own contracts on a toy tree of the same packages, with chosen imports."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    modules = {"refimpl/__init__.py": refimpl_imports, "benchmarks/__init__.py": "",
               "conformance/__init__.py": "", "conformance/contract.py": "",
               "conformance/adapters/__init__.py": "", "conformance/adapters/acme.py": adapter_imports,
               "conformance/checks/__init__.py": checks_import}
    named = [m for c in config["contracts"] for key in ("source_modules", "forbidden_modules",
                                                          "layers") for m in c.get(key, [])]
    for entry in named:
        for module in entry.replace(":", "|").split("|"):
            parts = module.strip().split(".")
            for i in range(1, len(parts)):
                modules.setdefault("/".join(parts[:i]) + "/__init__.py", "")
            if "/".join(parts) + "/__init__.py" not in modules:
                modules.setdefault("/".join(parts) + ".py", "")
    config = {"root_packages": _toy(config["root_packages"]),
              "contracts": [{k: (_toy(v) if k != "name" else v) for k, v in c.items()}
                            for c in config["contracts"]]}
    for path, text in modules.items():
        path = tmp_path / _toy(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_toy(text) + "\n")
    (tmp_path / "pyproject.toml").write_text(_toml(config))
    return tmp_path


def _toml(config: dict) -> str:
    """The [tool.importlinter] table back as TOML (strings and lists of strings only)."""
    def value(v):
        return "[" + ", ".join(value(x) for x in v) + "]" if isinstance(v, list) else f'"{v}"'
    out = ["[tool.importlinter]", f"root_packages = {value(config['root_packages'])}"]
    for contract in config["contracts"]:
        out.append("[[tool.importlinter.contracts]]")
        out += [f"{k} = {value(v)}" for k, v in contract.items()]
    return "\n".join(out) + "\n"


def test_each_rule_rejects_the_import_it_forbids(tmp_path):
    ok = _toy_project(tmp_path / "ok", "", "import conformance.contract", "")
    assert _lint(ok).returncode == 0, _lint(ok).stdout
    cases = {
        "refimpl imports the harness": ("import conformance.runner", "", ""),
        "an adapter imports the runner": ("", "import conformance.runner", ""),
        "the checks import an adapter": ("", "", "import conformance.adapters.acme"),
        "the checks import the runner (a cycle)": ("", "", "import conformance.runner"),
    }
    for what, imports in cases.items():
        tree = _toy_project(tmp_path / what.replace(" ", "_"), *imports)
        proc = _lint(tree)
        assert proc.returncode != 0 and "BROKEN" in proc.stdout, f"{what}: not caught\n{proc.stdout}"
    shutil.rmtree(tmp_path, ignore_errors=True)
