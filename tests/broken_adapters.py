"""Deliberately misbehaving adapters for the harness's own tests: each breaks one estimator in
one way (raises, hangs, NaN, wrong shape, a list, kills its process) and leaves the others
healthy, so a certification must report ``error`` on exactly that estimator."""

import os
import time

import torch

import refimpl
from conformance import Unsupported
from conformance.adapters.reference import RefimplAdapter


class Raises(RefimplAdapter):
    name = "broken-raises"

    @staticmethod
    def gae(*args, **kwargs):
        raise RuntimeError("boom")


class Hangs(RefimplAdapter):
    name = "broken-hangs"

    @staticmethod
    def leave_one_out_advantages(*args, **kwargs):
        time.sleep(3600)


class ReturnsNaN(RefimplAdapter):
    name = "broken-nan"

    @staticmethod
    def ipo_loss(*args, **kwargs):
        return torch.full_like(refimpl.ipo_loss(*args, **kwargs), float("nan"))


class WrongShape(RefimplAdapter):
    name = "broken-shape"

    @staticmethod
    def sequence_logprob(token_logp, mask):
        return refimpl.sequence_logprob(token_logp, mask).unsqueeze(1)


class ReturnsList(RefimplAdapter):
    name = "broken-list"

    @staticmethod
    def bradley_terry_loss(*args, **kwargs):
        return refimpl.bradley_terry_loss(*args, **kwargs).tolist()


class KillsProcess(RefimplAdapter):
    name = "broken-exit"

    @staticmethod
    def dpo_loss(*args, **kwargs):
        os._exit(3)


class Partial:
    """Only two functions, one of which cannot honour every option."""
    name = "partial"

    @staticmethod
    def kl_estimate(logp, ref_logp, mask=None, kind="k3"):
        if kind == "k2":
            raise Unsupported("this framework has no k2 estimator")
        return refimpl.kl_estimate(logp, ref_logp, mask, kind)

    @staticmethod
    def discounted_returns(rewards, mask, gamma=1.0):
        return refimpl.discounted_returns(rewards, mask, gamma)

    @staticmethod
    def ipo_loss(*args, **kwargs):
        raise Unsupported("this trainer has no IPO loss")


class Declared(RefimplAdapter):
    """Declares one real deviation, one stale one, and one key that matches nothing."""
    name = "declared"
    known_deviations = {
        "leave_one_out_advantages/baseline-excludes-self": "divides by G (acme/loo.py:12, acme 0.1)",
        "gae/matches-reference": "stale: claims a deviation that does not occur (acme/gae.py:3)",
        "no_such_function/*": "matches no check",
    }
    train_step = None                   # declarations of function-level checks only

    @staticmethod
    def leave_one_out_advantages(scores, group_ids):
        _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
        total = torch.zeros(len(counts), dtype=scores.dtype).index_add(0, inv, scores)[inv]
        return scores - (total - scores) / counts[inv].to(scores.dtype)


raises, hangs, nan, shape, listy, exits = Raises(), Hangs(), ReturnsNaN(), WrongShape(), ReturnsList(), KillsProcess()
partial, declared = Partial(), Declared()


class AllBroken(RefimplAdapter):
    """Every misbehaviour at once, each on its own estimator."""
    name = "broken-all"
    gae = staticmethod(Raises.gae)
    leave_one_out_advantages = staticmethod(Hangs.leave_one_out_advantages)
    ipo_loss = staticmethod(ReturnsNaN.ipo_loss)
    sequence_logprob = staticmethod(WrongShape.sequence_logprob)
    bradley_terry_loss = staticmethod(ReturnsList.bradley_terry_loss)
    dpo_loss = staticmethod(KillsProcess.dpo_loss)
    # the function-level misbehaviours only: the training checks' own handling of a misbehaving
    # train_step is tested in tests/test_training_checks.py
    train_step = None
    train_run = None


all_broken = AllBroken()


class DefaultsReportPid(RefimplAdapter):
    """Its framework_defaults() tells which process ran it (a framework's config code runs in
    the worker, under its isolation and timeout), plus a key outside the vocabulary."""
    name = "defaults-pid"

    @staticmethod
    def framework_defaults():
        return {"group_size": os.getpid(), "not_a_key": 1}


class DefaultsRaise(RefimplAdapter):
    name = "defaults-raise"

    @staticmethod
    def framework_defaults():
        raise RuntimeError("config class moved")


defaults_pid = DefaultsReportPid()
defaults_raise = DefaultsRaise()


class SlowDefaults(RefimplAdapter):
    """A framework whose config classes take long to import: framework_defaults() sleeps."""
    name = "slow-defaults"

    @staticmethod
    def framework_defaults():
        time.sleep(3600)


class BadFrameworkSpecifier(RefimplAdapter):
    name = "bad-specifier"
    framework = {"torch": "latest"}


slow_defaults = SlowDefaults()
bad_specifier = BadFrameworkSpecifier()
