"""What every framework adapter's tests share: certify each variant once, in-process, and
assert that it conforms with every declaration live (docs/contract.md: a declared deviation that no
longer occurs is a failure)."""

import fnmatch
import json
import os
import re
from pathlib import Path

from conformance.runner import certify

_REPORTS: dict = {}


def certified(adapter, tmp_path_factory) -> dict:
    """The certification report of ``adapter`` (computed once per test session)."""
    if adapter.name not in _REPORTS:
        # .ci/certify_frameworks.sh has just certified every variant in this same environment
        # and points here: the tests read that report instead of certifying a second time
        made = os.environ.get("RLCONFORM_REPORTS_DIR")
        path = Path(made) / f"{adapter.name}.json" if made else None
        if path is not None and path.exists():
            _REPORTS[adapter.name] = json.loads(path.read_text())
        else:
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


def one_token_losses(ppo_clip_loss, c, clip_high, r, A):
    """((loss, d loss / d logp) of ``ppo_clip_loss`` (an adapter's), the same of refimpl) for one
    token of ratio r and advantage A, old log-prob -3 (a float32 number: a cast is exact), dual
    clip c, aggregated as seq-mean-token-mean."""
    import math

    import torch

    import refimpl
    old = torch.tensor([[-3.0]], dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.bool)
    adv = torch.tensor([A], dtype=torch.float64)
    out = []
    for fn in (ppo_clip_loss, refimpl.ppo_clip_loss):
        lp = (old + math.log(r)).requires_grad_(True)
        loss = fn(lp, old, adv, mask, 0.2, clip_high, c, "seq-mean-token-mean")
        (g,) = torch.autograd.grad(loss, lp)
        out.append((float(loss.detach()), float(g)))
    return out


def assert_delta_example(sentence: str, ppo_clip_loss):
    """Re-run a delta declaration's example with an adapter's ``ppo_clip_loss`` (see
    ``one_token_losses``): the losses and gradients to the digits the sentence gives, and delta
    above 1 + epsilon_high equal to the contract's dual clip."""

    def one_token_loss(c, clip_high, r, A):
        return one_token_losses(ppo_clip_loss, c, clip_high, r, A)

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


#: the example a PPO log-ratio clamp declaration states
CLAMP_EXAMPLE = (r"log-ratio of ([\d.]+) with advantage (-?[\d.]+) the token's loss is ([\d.e+]+) "
                 r"instead of ([\d.e+]+), with gradient (-?[\d.e+]+) instead of ([\d.e+]+)")


def assert_log_ratio_clamp_example(sentence: str, ppo_clip_loss):
    """Re-run a log-ratio clamp declaration's example: one token at the stated log-ratio and
    advantage gets, through the adapter's ``ppo_clip_loss``, the stated loss and gradient, and
    the contract's (refimpl) the stated ones (to the 6 digits stated)."""
    import torch

    import refimpl
    l, a, got_loss, want_loss, got_grad, want_grad = map(float, stated_numbers(CLAMP_EXAMPLE,
                                                                               sentence))
    mask = torch.ones(1, 1, dtype=torch.bool)
    old, adv = torch.zeros(1, 1, dtype=torch.float64), torch.full((1, 1), a, dtype=torch.float64)
    for fn, stated_loss, stated_grad in ((ppo_clip_loss, got_loss, got_grad),
                                         (refimpl.ppo_clip_loss, want_loss, want_grad)):
        logp = torch.full((1, 1), l, dtype=torch.float64, requires_grad=True)
        loss = fn(logp, old, adv, mask)
        (grad,) = torch.autograd.grad(loss, logp)
        assert float(f"{loss.item():.6g}") == stated_loss, (fn, loss.item(), sentence)
        assert float(f"{grad.item():.6g}") == stated_grad, (fn, grad.item(), sentence)
