"""The training checks' own handling of adapters (docs/contract.md, "Training steps"): a
train_step that misbehaves outside what a check is about gets ``error`` (the run goes on), the
capabilities fit each step's config, and what a check skips it says why. The checks against
refimpl and against their mutants are in tests/test_conformance.py."""

from __future__ import annotations

import torch

import refimpl
from conformance.registry import REGISTRY
from conformance.runner import run_check


def _row(adapter, check_id: str) -> dict:
    return run_check(REGISTRY[check_id], adapter)


class _Step:
    name = "step"
    capabilities: dict = {}

    def train_step(self, model, ref_model, batch, config):
        return refimpl.train_step(model, ref_model, batch, config)


def test_a_plain_rewrap_of_the_recipe_passes():
    assert _row(_Step(), "grpo/step-matches-recipe-gpt2")["status"] == "pass"


def test_a_train_step_that_raises_is_an_error_and_says_so():
    class Raises(_Step):
        def train_step(self, model, ref_model, batch, config):
            raise RuntimeError("cuda not found")
    row = _row(Raises(), "grpo/step-matches-recipe-llama")
    assert row["status"] == "error" and "cuda not found" in row["message"], row


def test_a_loss_tensor_under_gradient_accumulation_is_an_error():
    class TensorAlways(_Step):
        def train_step(self, model, ref_model, batch, config):
            return refimpl.recipes.RECIPES[config["algorithm"]](model, ref_model, batch, config).loss
    row = _row(TensorAlways(), "grpo/grad-accum")
    assert row["status"] == "error" and "grad_accum" in row["message"], row


def test_a_train_step_that_steps_the_optimizer_is_an_error():
    class Steps(_Step):
        def train_step(self, model, ref_model, batch, config):
            loss = refimpl.train_step(model, ref_model, batch, config)
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 1e-3 * p.grad
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            return {"loss": float(loss.detach()), "grads": grads}
    row = _row(Steps(), "dpo/step-matches-recipe-llama")
    assert row["status"] == "error" and "changed the weights" in row["message"], row


def test_a_missing_gradient_is_an_error():
    class Drops(_Step):
        def train_step(self, model, ref_model, batch, config):
            loss = refimpl.train_step(model, ref_model, batch, config)
            loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            grads.pop(next(iter(grads)))
            return {"loss": float(loss.detach()), "grads": grads}
    row = _row(Drops(), "ipo/step-matches-recipe-gpt2")
    assert row["status"] == "error" and "no gradient" in row["message"], row


def test_an_algorithm_the_variant_does_not_implement_is_skipped_with_the_reason():
    class GrpoOnly(_Step):
        capabilities = {"algorithms": ["grpo"]}
    row = _row(GrpoOnly(), "ppo/step-matches-recipe-llama")
    assert row["status"] == "skip" and "does not implement ppo" in row["message"], row


def test_an_aggregation_narrowed_per_algorithm_is_the_only_one_run():
    seen = []

    class OneMode(_Step):
        capabilities = {"grpo.agg": ["seq-mean-token-sum"]}

        def train_step(self, model, ref_model, batch, config):
            seen.append(config["agg"])
            return super().train_step(model, ref_model, batch, config)
    row = _row(OneMode(), "grpo/grad-accum")
    assert row["status"] == "pass", row
    assert set(seen) == {"seq-mean-token-sum"}
    assert "unsupported" in (row["note"] or ""), row      # the other modes: noted, not run


def test_kl_in_loss_only_skips_the_recipes_that_put_the_kl_in_the_reward():
    """reinforce_pp and ppo refuse kl_in="loss": a variant that honours only the loss placement
    cannot run them (skip), rather than being called with a config the recipe rejects."""
    class LossOnly(_Step):
        capabilities = {"kl_in": ["loss"]}
    row = _row(LossOnly(), "reinforce_pp/step-matches-recipe-llama")
    assert row["status"] == "skip" and "kl_in" in row["message"], row
    assert _row(LossOnly(), "grpo/kl-term-exact")["status"] == "pass"


def test_a_failure_names_the_parameter_and_the_likely_cause():
    from tests import mutants
    row = _row(mutants.adapter("position_ids_from_arange"), "grpo/step-matches-recipe-gpt2")
    assert row["status"] == "fail" and row["class"] == "gradient"
    assert "gradient of transformer." in row["message"] and "position ids" in row["message"]


def test_training_fixtures_name_refimpls_architectures_without_importing_transformers():
    """conformance.training keeps its own copy of refimpl.models.ARCHS so that loading the checks
    (every certification, in the CLI and in each worker) does not load transformers."""
    import subprocess
    import sys

    from conformance import training
    from refimpl import models
    assert training.ARCHS == models.ARCHS
    probe = ("import sys, conformance.checks, conformance.cli; "
             "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "loading the checks imported transformers"
