"""What every framework adapter's tests share: certify each variant once, in-process, and
assert that it conforms with every declaration live (docs/contract.md: a declared deviation that no
longer occurs is a failure)."""

import fnmatch

from conformance.runner import certify

_REPORTS: dict = {}


def certified(adapter, tmp_path_factory) -> dict:
    """The certification report of ``adapter`` (computed once per test session)."""
    if adapter.name not in _REPORTS:
        _REPORTS[adapter.name] = certify(adapter, str(tmp_path_factory.mktemp(adapter.name)),
                                         isolate=False)
    return _REPORTS[adapter.name]


def assert_conforms(data: dict):
    bad = [f"{r['status']} {r['id']}: {r['message']}" for r in data["checks"]
           if r["status"] in ("fail", "error")]
    assert not bad, "\n".join(bad)
    assert data["warnings"] == [], data["warnings"]


def assert_every_declaration_occurs(adapter, data: dict):
    xfailed = [r["id"] for r in data["checks"] if r["status"] == "xfail"]
    stale = [p for p in adapter.known_deviations if not fnmatch.filter(xfailed, p)]
    assert not stale, f"declared deviations that did not xfail: {stale}"
