"""The repository keeps its promises: docstrings with equations and sources, counts the README
states, CI running exactly the README's test command."""

import inspect
import pathlib
import re

import refimpl

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The signatures are held against docs/contract.md's tables in tests/test_contract_doc.py.


def test_every_count_of_checks_the_readme_states_is_true():
    """A number the README gives for the checks or the adapters is the number there is (or the
    README states none)."""
    from conformance.checks import all_checks
    from conformance.loading import registered_adapters

    text = (ROOT / "README.md").read_text()
    n_checks, n_all = len(all_checks()), len(all_checks(thorough=True))
    for m in re.finditer(r"\b(\d+) (?:[\w-]+ )?checks\b", text):
        assert int(m.group(1)) in (n_checks, n_all), (
            f"README says {m.group(0)!r}; there are {n_checks} ({n_all} with --thorough)")
    n_variants = len(registered_adapters()) - 1                       # refimpl aside
    for m in re.finditer(r"\b(\d+) (?:framework )?variants\b", text):
        assert int(m.group(1)) == n_variants, f"README says {m.group(0)!r}; there are {n_variants}"


def test_every_function_carries_an_equation_and_every_module_a_source():
    missing = []
    for name in refimpl.CANONICAL:
        fn = getattr(refimpl, name)
        doc = inspect.getdoc(fn) or ""
        if not re.search(r"[=^]", doc):
            missing.append(f"{name}: no equation in its docstring")
        module_doc = inspect.getmodule(fn).__doc__ or ""
        if not re.search(r"(arXiv:\d{4}\.\d{4,5}|\b(19|20)\d\d\b)", module_doc):
            missing.append(f"{name}: its module docstring cites no source (paper, year, arXiv id)")
    assert not missing, "\n".join(missing)


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S).group(1)
    lines, current = [], ""
    for line in block.splitlines():
        current += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [ln for ln in lines if ln]


def test_readme_opens_with_two_commands_and_ci_runs_the_second_verbatim():
    commands = _readme_commands()
    assert len(commands) == 2, f"README's first code block should hold two commands: {commands}"
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci, f".ci/run must call the README's test command: {commands[1]!r}"
    assert "pytest" in commands[1] and "torch==2.13.0" in commands[1]
    assert "torch==2.13.0" in commands[0] and "rlconform certify" in commands[0]


def test_nothing_points_to_files_that_do_not_exist_any_more():
    """The contract is docs/contract.md (API.md is not in the repository); the harness's core
    and op table became registry/context and the concept modules."""
    stale = re.compile(r"API\.md|conformance\.core\b|conformance/core\.py|conformance\.ops\b|"
                       r"conformance/ops\.py|checks/(generic|specific|exact|thorough)\.py")
    places = [p for d in ("refimpl", "conformance", "tests", "benchmarks", "docs", ".ci")
              for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".md", ".sh", "")
              and p.is_file() and p.name != "test_repo.py"]
    places += [ROOT / "README.md", ROOT / "tox.ini", ROOT / "reports" / "README.md",
               ROOT / "CHANGELOG.md"]
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in places
            for i, line in enumerate(p.read_text(errors="ignore").splitlines(), 1)
            if stale.search(line) and "former" not in line]
    assert not hits, "stale references:\n" + "\n".join(hits)


def test_the_package_states_one_version():
    import tomllib
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert refimpl.__version__ == version, (
        f"refimpl.__version__ {refimpl.__version__} (the reports' rlconform_version) differs from "
        f"pyproject.toml's {version}")


def test_no_source_file_reads_the_shared_folder_at_run_time():
    offenders = [str(p.relative_to(ROOT)) for d in ("refimpl", "conformance")
                 for p in (ROOT / d).rglob("*.py") if "../shared" in p.read_text()]
    assert not offenders, offenders


def test_readme_table_of_what_the_frameworks_do_differently_is_generated_from_the_reports():
    """The README's table "What the frameworks do differently" is what the committed
    reports/*.json give (conformance.findings.readme_table), not written by hand; regenerate it
    with ``python -m conformance.findings --readme README.md reports/*.json``."""
    from conformance.findings import README_END, README_START, load_reports, readme_table

    text = (ROOT / "README.md").read_text()
    assert README_START in text and README_END in text, "the README lost the table's markers"
    table = text.split(README_START, 1)[1].split(README_END, 1)[0].strip()
    reports = load_reports(sorted((ROOT / "reports").glob("*.json")))
    assert table == readme_table(reports), (
        "README.md's findings table differs from the committed reports: run "
        "python -m conformance.findings --readme README.md reports/*.json")
