"""What every framework adapter's tests share: certify each variant once, in-process, and
assert that it conforms with every declaration live (docs/contract.md: a declared deviation that no
longer occurs is a failure)."""

import fnmatch
import re

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


def stated_numbers(pattern: str, sentence: str) -> tuple:
    """The numbers a declaration states, parsed from the sentence (it must state them): the
    tests re-run each example so that a sentence cannot drift from what the framework does."""
    found = re.search(pattern, sentence)
    assert found, f"the declaration no longer states its example: {sentence!r}"
    return found.groups()


#: the example a "delta" declaration (a ratio cap used as the dual clip) states
DELTA_EXAMPLE = (
    r"with c = ([\d.]+) and epsilon_high = ([\d.]+) a token with r = ([\d.]+) and A = \+1 gets "
    r"loss (-[\d.]+) and no gradient instead of (-[\d.]+) with gradient (-[\d.]+), and one "
    r"with r = ([\d.]+) and A = -1 gets loss ([\d.]+) with gradient ([\d.]+) instead of "
    r"([\d.]+) with none")


def assert_delta_example(sentence: str, one_token_loss):
    """Re-run a delta declaration's example: ``one_token_loss(c, eps_high, r, A)`` gives
    ((framework loss, gradient), (contract loss, gradient)) on one token; the losses and
    gradients to the digits the sentence gives, and delta above 1 + epsilon_high equal to the
    contract's dual clip."""
    (c, eps_high, r_pos, loss_pos, want_pos, want_grad_pos, r_neg, loss_neg, grad_neg,
     want_neg) = map(float, stated_numbers(DELTA_EXAMPLE, sentence))
    (got, g), (ref, ref_g) = one_token_loss(c, eps_high, r_pos, +1.0)
    assert (round(got, 6), g) == (loss_pos, 0.0), (got, g)
    assert (round(ref, 6), round(ref_g, 6)) == (want_pos, want_grad_pos), (ref, ref_g)
    (got, g), (ref, ref_g) = one_token_loss(c, eps_high, r_neg, -1.0)
    assert (round(got, 6), round(g, 6)) == (loss_neg, grad_neg), (got, g)
    assert (round(ref, 6), ref_g) == (want_neg, 0.0), (ref, ref_g)
    (got, g), (ref, ref_g) = one_token_loss(3.0, eps_high, 4.0, -1.0)
    assert (got, g) == (ref, ref_g) == (3.0, 0.0)
