"""The repository keeps its promises: the contract's signatures, docstrings with equations and
sources, CI running exactly the README's test command."""

import inspect
import pathlib
import re

import conformance
import refimpl

ROOT = pathlib.Path(__file__).resolve().parents[1]

# API.md v1: names, argument names and defaults, fixed for every adapter.
SIGNATURES = {
    "discounted_returns": "(rewards, mask, gamma=1.0)",
    "gae": "(rewards, values, mask, gamma=1.0, lam=0.95)",
    "kl_penalized_rewards": "(scores, logp, ref_logp, mask, beta, kind='k1')",
    "group_normalized_advantages": "(scores, group_ids, scale='group', eps=1e-06)",
    "leave_one_out_advantages": "(scores, group_ids)",
    "batch_normalized_advantages": "(advantages, mask=None, eps=1e-08)",
    "kl_estimate": "(logp, ref_logp, mask=None, kind='k3')",
    "aggregate": "(values, mask, mode='token-mean', norm_len=None)",
    "policy_gradient_loss": "(logp, advantages, mask, agg='token-mean', norm_len=None)",
    "ppo_clip_loss": "(logp, old_logp, advantages, mask, clip_low=0.2, clip_high=None, "
                     "dual_clip=None, agg='token-mean', norm_len=None)",
    "value_loss": "(values, old_values, returns, mask, clip=None, agg='token-mean', norm_len=None)",
    "bradley_terry_loss": "(chosen_rewards, rejected_rewards, margin=None)",
    "dpo_loss": "(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, "
                "ref_rejected_logps, beta=0.1, label_smoothing=0.0)",
    "ipo_loss": "(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, "
                "ref_rejected_logps, tau=0.1)",
    "token_logprobs": "(logits, tokens)",
    "sequence_logprob": "(token_logp, mask)",
}


def _bare(sig: inspect.Signature) -> str:
    return str(sig.replace(parameters=[p.replace(annotation=inspect.Parameter.empty)
                                       for p in sig.parameters.values()],
                           return_annotation=inspect.Signature.empty))


def test_refimpl_exports_every_contract_function_with_its_signature():
    assert set(refimpl.CANONICAL) == set(SIGNATURES)
    bad = [f"{name}{_bare(inspect.signature(getattr(refimpl, name)))}, but API.md says {name}{want}"
           for name, want in SIGNATURES.items()
           if _bare(inspect.signature(getattr(refimpl, name))) != want]
    assert not bad, "\n".join(bad)


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


def test_adapters_may_raise_unsupported():
    assert issubclass(conformance.Unsupported, Exception)


def test_no_source_file_reads_the_shared_folder_at_run_time():
    offenders = [str(p.relative_to(ROOT)) for d in ("refimpl", "conformance")
                 for p in (ROOT / d).rglob("*.py") if "../shared" in p.read_text()]
    assert not offenders, offenders
