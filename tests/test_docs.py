"""Generated documentation is up to date: ``docs/checks.md`` (``python -m conformance.docgen``)
lists every check id, generated ones included, with the file and line that defines it."""

from pathlib import Path

from conformance import docgen
from conformance.checks import all_checks

ROOT = Path(__file__).resolve().parents[1]


def test_docs_checks_md_is_up_to_date():
    committed = (ROOT / "docs" / "checks.md").read_text()
    assert committed == docgen.render(), (
        "docs/checks.md is out of date: run `python -m conformance.docgen` and commit the result")


def test_every_check_id_can_be_found_by_grep():
    text = (ROOT / "docs" / "checks.md").read_text()
    sources = "".join(p.read_text() for p in (ROOT / "conformance" / "checks").glob("*.py"))
    missing = [c.id for c in all_checks(thorough=True) if f"`{c.id}`" not in text]
    assert not missing, f"check ids missing from docs/checks.md: {missing}"
    # hand-written ids appear literally in their module; generated ones in docs/checks.md
    for c in all_checks(thorough=True):
        if not c.file.endswith(("templates.py", "training.py")):   # those two generate ids
            assert f'"{c.id}"' in sources, f"{c.id}: not literally in conformance/checks/"
            assert (ROOT / c.file).read_text().splitlines()[c.line - 1].lstrip().startswith(
                ("@check", "input_check", "def ")) or f'"{c.id}"' in "\n".join(
                (ROOT / c.file).read_text().splitlines()[c.line - 1:c.line + 2]), (
                f"{c.id}: {c.file}:{c.line} is not where it is defined")
