"""pytest plugin: ``pytest --rlconform-adapter=mymodule:ADAPTER`` collects every check as a test
item (``test_rlconform[<check id>]``), so a framework's own CI runs the suite; and
``parametrize_with_checks(adapter)`` for a one-line test body, in the style of scikit-learn.

The adapter runs in the pytest process itself: there is no crash isolation and no timeout here
(a segfault in the adapter ends the pytest run). ``rlconform certify`` runs each check in a worker
process instead.
"""

from __future__ import annotations

import pytest

from conformance.checks import all_checks
from conformance.loading import AdapterLoadError, glob_error, load_adapter
from conformance.runner import run_check


def pytest_addoption(parser):
    group = parser.getgroup("rlconform")
    group.addoption("--rlconform-adapter", default=None,
                    help="certify this adapter (a registered name, module:attribute, "
                         "path/to/file.py:NAME or module:)")
    group.addoption("--rlconform-k", default=None, help="only checks whose id matches this glob")
    group.addoption("--rlconform-seed", type=int, default=0,
                    help="seed the inputs are drawn with (default 0)")


def pytest_configure(config):
    """Load the adapter and check the glob once, up front: a spec that cannot be loaded or a
    glob that selects nothing is a usage error (one line, exit status 4), not an internal
    error."""
    spec = config.getoption("--rlconform-adapter", None)
    if not spec:
        return
    try:
        adapter = load_adapter(spec)
    except AdapterLoadError as exc:
        raise pytest.UsageError(f"--rlconform-adapter: {exc}") from None
    pattern = config.getoption("--rlconform-k", None)
    problem = glob_error(pattern, thorough=True, option="--rlconform-k")
    if problem is None and pattern and not all_checks(pattern):
        problem = (f"--rlconform-k {pattern!r} matches only checks of the thorough tier, which "
                   "the pytest plugin does not run")
    if problem:
        raise pytest.UsageError(problem)
    config._rlconform_adapter = adapter


def assert_check(row: dict):
    """Turn a report row into a pytest outcome."""
    status, msg = row["status"], f"{row['id']}: {row['message']}"
    if status == "skip":
        pytest.skip(msg)
    if status == "xfail":
        pytest.xfail(msg)
    if status in ("fail", "error"):
        pytest.fail(f"{status}: {msg} [sample {row.get('sample')}]", pytrace=False)


def parametrize_with_checks(adapter, pattern: str | None = None, seed: int = 0):
    """Decorate ``def test_x(check): check()`` to run every check on ``adapter``."""
    checks = all_checks(pattern)

    def make(chk):
        def run():
            assert_check(run_check(chk, adapter, seed))
        return run
    return pytest.mark.parametrize("check", [pytest.param(make(c), id=c.id) for c in checks])


class _RlconformItem(pytest.Item):
    def __init__(self, *, check, adapter, seed, **kwargs):
        super().__init__(**kwargs)
        self.check, self.adapter, self.seed = check, adapter, seed

    def runtest(self):
        assert_check(run_check(self.check, self.adapter, self.seed))

    def reportinfo(self):
        return self.path, None, f"rlconform[{self.check.id}]"


class _RlconformCollector(pytest.Collector):
    def __init__(self, *, adapter, pattern, seed, **kwargs):
        super().__init__(**kwargs)
        self.adapter, self.pattern, self.seed = adapter, pattern, seed

    def collect(self):
        for chk in all_checks(self.pattern):
            yield _RlconformItem.from_parent(self, name=f"test_rlconform[{chk.id}]", check=chk,
                                             adapter=self.adapter, seed=self.seed)


def pytest_collection_modifyitems(session, config, items):
    spec = config.getoption("--rlconform-adapter", None)
    if not spec or getattr(config, "_rlconform_added", False):
        return
    config._rlconform_added = True
    adapter = getattr(config, "_rlconform_adapter", None) or load_adapter(spec)
    collector = _RlconformCollector.from_parent(session, name=f"rlconform[{adapter.name}]",
                                                adapter=adapter,
                                                pattern=config.getoption("--rlconform-k"),
                                                seed=config.getoption("--rlconform-seed"))
    items.extend(collector.collect())
