"""Reproductions to send upstream (conformance/repro.py): the contract's equations written into
the scripts equal refimpl; the failing sample is found on a broken implementation and nothing is
written for a correct one; the script rebuilds its inputs exactly, runs with the real
``conformance`` and ``refimpl`` unreadable, exits 0 while the difference is there and 1 once the
framework agrees; the bulk mode writes one script per gradient- or value-class row and nothing
for the others (issue 10, section 5)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conformance.context import Context

import refimpl
from conformance import repro
from conformance.checks import all_checks
from conformance.checks.templates import mutant_adapter
from conformance.loading import load_adapter
from conformance.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
F64, F32 = torch.float64, torch.float32
all_checks(thorough=True)


# --- the equations the scripts print as "expected" ------------------------------------------------

def _bt(g, B=4, T=5, dtype=F64, scale=1.0, shift=0.0):
    return (shift + scale * torch.randn(B, T, generator=g, dtype=F64)).to(dtype)


def _mask(B=4, T=5):
    lengths = torch.tensor([3, 1, 5, 2][:B])
    return torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)


def _groups(g, dtype):
    ids = torch.tensor([7, 3, 7, 3, 9, 9, 7, 5, 5, 5])
    scores = torch.randn(10, generator=g, dtype=F64).to(dtype)
    scores[7:] = 0.7                              # an all-equal group, not exactly representable
    return scores, ids


def _pairs(g, dtype, n=6):
    return [(-10 + 2 * torch.randn(n, generator=g, dtype=F64)).to(dtype) for _ in range(4)]


AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")

#: canonical function -> (inputs from a generator and a dtype, every option value to try)
CASES = {
    "discounted_returns": (lambda g, d: [_bt(g, dtype=d), _mask()],
                           [{}, {"gamma": 0.0}, {"gamma": 0.9}, {"gamma": 1.0}]),
    "gae": (lambda g, d: [_bt(g, dtype=d), _bt(g, dtype=d), _mask()],
            [{}, {"gamma": 0.9, "lam": 0.0}, {"gamma": 0.0, "lam": 0.95}, {"gamma": 0.9, "lam": 1.0}]),
    "kl_estimate": (lambda g, d: [_bt(g, dtype=d, scale=0.7, shift=-1), _bt(g, dtype=d, scale=0.7,
                                                                            shift=-1), _mask()],
                    [{"kind": k} for k in ("k1", "k2", "k3")] + [{}, {"mask": None}]),
    "kl_penalized_rewards": (lambda g, d: [torch.randn(4, generator=g, dtype=F64).to(d),
                                           _bt(g, dtype=d, shift=-1), _bt(g, dtype=d, shift=-1),
                                           _mask()],
                             [{"beta": b, "kind": k} for b in (0.0, 0.1) for k in ("k1", "k2", "k3")]),
    "group_normalized_advantages": (_groups, [{}, {"scale": "group"}, {"scale": "batch"},
                                              {"scale": "none"}, {"eps": 0.0}, {"eps": 1e-8}]),
    "leave_one_out_advantages": (_groups, [{}]),
    "batch_normalized_advantages": (lambda g, d: [_bt(g, dtype=d, scale=2, shift=0.5), _mask()],
                                    [{}, {"eps": 0.0}, {"eps": 1e-6}, {"mask": None}]),
    "aggregate": (lambda g, d: [_bt(g, dtype=d), _mask()],
                  [{"mode": m} for m in AGGS] + [{"mode": AGGS[3], "norm_len": 8}]),
    "policy_gradient_loss": (lambda g, d: [_bt(g, dtype=d, scale=0.5, shift=-1.5),
                                           torch.randn(4, generator=g, dtype=F64).to(d), _mask()],
                             [{"agg": m} for m in AGGS] + [{"agg": AGGS[3], "norm_len": 8}]),
    "ppo_clip_loss": (lambda g, d: [_bt(g, dtype=d, scale=0.3, shift=-1.5),
                                    _bt(g, dtype=d, scale=0.3, shift=-1.5), _bt(g, dtype=d), _mask()],
                      [{"agg": m} for m in AGGS]
                      + [{"clip_low": 0.1, "clip_high": 0.28}, {"dual_clip": 3.0},
                         {"dual_clip": 1.2, "clip_high": 0.28}, {"agg": AGGS[3], "norm_len": 8}]),
    "value_loss": (lambda g, d: [_bt(g, dtype=d), _bt(g, dtype=d), _bt(g, dtype=d), _mask()],
                   [{"agg": m} for m in AGGS] + [{"clip": 0.2}, {"clip": 0.0},
                                                 {"agg": AGGS[3], "norm_len": 8}]),
    "bradley_terry_loss": (lambda g, d: _pairs(g, d)[:2],
                           [{}, {"margin": 0.5}, {"margin": torch.linspace(0, 1, 6, dtype=F64)}]),
    "dpo_loss": (_pairs, [{}, {"beta": 0.5}, {"label_smoothing": 0.2}]),
    "ipo_loss": (_pairs, [{}, {"tau": 0.5}]),
    "token_logprobs": (lambda g, d: [torch.randn(3, 4, 5, generator=g, dtype=F64).to(d),
                                     torch.randint(0, 5, (3, 4), generator=g)], [{}]),
    "sequence_logprob": (lambda g, d: [_bt(g, dtype=d, shift=-2), _mask()], [{}]),
}


def test_every_canonical_function_has_an_equation_and_a_case():
    assert set(repro.EQUATIONS) == set(refimpl.CANONICAL) == set(CASES)


def _as_list(out):
    return list(out) if isinstance(out, tuple) else [out]


def _off_by(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / max(1, |b|) at worst; NaN where exactly one of them is NaN counts as infinite
    (eps = 0 on an all-equal group: 0 / 0 in both is agreement)."""
    a, b = a.detach(), b.detach()
    if not torch.equal(a.isnan(), b.isnan()):
        return float("inf")
    return float(((a - b).abs() / b.abs().clamp(min=1)).nan_to_num(0.0).max())


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
def test_each_equation_equals_refimpl_for_every_option_value(name, dtype):
    """The script's expected value is the contract's: values and gradients equal refimpl's to
    the rounding of a few operations in a different order (the check's float64 tolerance, 1e-10,
    scaled by max(1, |refimpl|); float32: 2e-6, about 16 ulps)."""
    make, options = CASES[name]
    tol = 1e-10 if dtype == F64 else 2e-6
    for seed in range(3):
        for kwargs in options:
            g = torch.Generator().manual_seed(seed)
            args = make(g, dtype)
            if "mask" in kwargs:                # mask=None given by keyword: no positional mask
                args = args[:-1]
            kwargs = {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
            diff = [i for i, a in enumerate(args) if a.is_floating_point()]
            mine = [a.clone().requires_grad_(True) if i in diff else a for i, a in enumerate(args)]
            ref = [a.clone().requires_grad_(True) if i in diff else a for i, a in enumerate(args)]
            got = _as_list(repro.EQUATIONS[name](*mine, **kwargs))
            want = _as_list(getattr(refimpl, name)(*ref, **kwargs))
            for o, r in zip(got, want, strict=True):
                assert o.dtype == r.dtype and o.shape == r.shape
                err = _off_by(o, r)
                assert err <= tol, f"{name} {kwargs} seed {seed}: value off by {err:.2e}"
            w = [torch.randn(r.shape, generator=g, dtype=F64).to(dtype) for r in want]
            if name in ("group_normalized_advantages", "leave_one_out_advantages"):
                continue                        # not differentiated by the checks (values only)
            gg = torch.autograd.grad(sum((o * x).sum() for o, x in zip(got, w)),
                                     [mine[i] for i in diff], allow_unused=True)
            gr = torch.autograd.grad(sum((r * x).sum() for r, x in zip(want, w)),
                                     [ref[i] for i in diff], allow_unused=True)
            for a, b in zip(gg, gr):
                a = torch.zeros_like(mine[0]) if a is None else a
                b = torch.zeros_like(a) if b is None else b
                err = _off_by(a, b)
                assert err <= tol, f"{name} {kwargs} seed {seed}: gradient off by {err:.2e}"


def test_the_equation_check_can_fail():
    """The comparison above rejects an equation with the contract's eps in the wrong place."""
    s, ids = _groups(torch.Generator().manual_seed(0), F64)
    wrong = repro.EQUATIONS["group_normalized_advantages"](s, ids, eps=1e-4)
    right = refimpl.group_normalized_advantages(s, ids)
    assert float((wrong - right).abs().max()) > 1e-10


def test_an_all_equal_group_gets_exactly_zero_from_the_equation():
    for dtype in (F64, F32):
        s, ids = _groups(torch.Generator().manual_seed(1), dtype)
        out = repro.EQUATIONS["group_normalized_advantages"](s, ids)
        assert torch.equal(out[7:], torch.zeros(3, dtype=dtype))


# --- literals -------------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [
    torch.tensor([[0.1, -0.0, float("nan")], [float("inf"), -float("inf"), 1e-310]], dtype=F64),
    torch.tensor([0.1, 1 / 3, -2.5e-8], dtype=F32),
    torch.tensor(0.7, dtype=F64),
    torch.tensor([[True, False], [False, True]]),
    torch.tensor([7, 3, -1], dtype=torch.int64),
], ids=["float64", "float32", "scalar", "bool", "int64"])
def test_tensor_literals_rebuild_the_tensor_bit_for_bit(t):
    namespace = {"torch": torch}
    exec("def exact(hexes, dtype, shape):\n    return torch.tensor([float.fromhex(h) for h in "
         "hexes], dtype=dtype).reshape(shape)\n", namespace)
    rebuilt = eval(repro.tensor_literal(t, comment=False), namespace)
    assert rebuilt.dtype == t.dtype and rebuilt.shape == t.shape
    if t.is_floating_point():
        assert torch.equal(rebuilt.view(torch.int64 if t.dtype == F64 else torch.int32),
                           t.view(torch.int64 if t.dtype == F64 else torch.int32))
    else:
        assert torch.equal(rebuilt, t)


# --- the failing sample ---------------------------------------------------------------------------

def test_the_failing_sample_of_a_value_mutant_is_found_and_a_correct_adapter_has_none():
    chk = REGISTRY["group_normalized_advantages/matches-reference"]
    found = repro.find_failing_call(chk, mutant_adapter("group_normalized_advantages~scaled"))
    assert found.value_excess == pytest.approx(0.01, rel=1e-6) and found.gradient_excess == 0.0
    assert found.call.sample.startswith("groups_unsorted_ids/float64")
    with pytest.raises(repro.NoDifference, match="agrees with refimpl"):
        repro.find_failing_call(chk, load_adapter("refimpl"))


def test_a_gradient_only_mutant_is_found_by_its_gradient():
    chk = REGISTRY["ppo_clip_loss/gradient-matches-reference"]
    found = repro.find_failing_call(chk, mutant_adapter("ppo_clip_loss~detached"))
    assert found.value_excess == 0.0 and found.gradient_excess > 0.1
    assert found.diff == (0,) and len(found.weights) == 1


def test_recorded_calls_are_those_after_resolve():
    """A variant that honours only token-mean gets its calls fitted (ctx.resolve): the recorded
    call is what the adapter got, not what the check asked for."""
    adapter = mutant_adapter("policy_gradient_loss~scaled")
    adapter.capabilities = {"agg": ["token-mean"]}
    ctx = Context(REGISTRY["policy_gradient_loss/matches-reference"], adapter)
    logp, adv, mask = torch.zeros(2, 3, dtype=F64), torch.ones(2, dtype=F64), _mask(2, 3)
    ctx.call(logp, adv, mask, agg="seq-mean-token-sum")
    (call,) = ctx.recorded
    assert call.kwargs == {"agg": "token-mean"} and torch.equal(call.args[2], mask)


# --- the script, standalone -----------------------------------------------------------------------

#: runs a script with every file of the repository's conformance/ and refimpl/ unreadable (an
#: audit hook on "open": import of such a file fails), then fails if any module was loaded from
#: there anyway; exits with the script's status
DRIVER = textwrap.dedent('''
    import os, runpy, sys
    blocked = tuple(os.path.realpath(p) + os.sep for p in sys.argv[1].split(os.pathsep))
    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes)):
            path = os.path.realpath(os.fsdecode(args[0]))
            if path.startswith(blocked):
                raise PermissionError(f"the script read {path}")
    sys.addaudithook(hook)
    script = sys.argv[2]
    sys.argv = [script]
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    loaded = sorted(name for name, m in list(sys.modules.items())
                    if (getattr(m, "__file__", None) or "").startswith(blocked))
    if loaded:
        print("loaded from the repository:", loaded)
        sys.exit(99)
    sys.exit(code)
''')


def run_standalone(script: Path, python: str = sys.executable) -> subprocess.CompletedProcess:
    blocked = os.pathsep.join(str(ROOT / p) for p in ("conformance", "refimpl"))
    driver = script.parent / "_driver.py"
    driver.write_text(DRIVER)
    return subprocess.run([python, "-I", str(driver), blocked, str(script)], cwd=script.parent,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def mutant_file(tmp_path):
    """refimpl with group_normalized_advantages scaled by 1.01, as a file adapter."""
    path = tmp_path / "adapters" / "broken.py"
    path.parent.mkdir()
    path.write_text("from conformance.checks.templates import mutant_adapter\n"
                    "broken = mutant_adapter('group_normalized_advantages~scaled')\n")
    return f"{path}:broken"


def test_the_driver_blocks_the_repository(tmp_path):
    """Control: a script that imports the real conformance fails under the driver."""
    script = tmp_path / "imports_rlconform.py"
    script.write_text("import conformance.runner\n")
    done = run_standalone(script)
    assert done.returncode != 0 and "the script read" in done.stderr


def test_the_script_runs_without_rlconform_and_shows_the_difference(tmp_path, mutant_file):
    out = tmp_path / "scripts" / "gna.py"
    finding = repro.write_repro(mutant_file, "group_normalized_advantages/matches-reference", out)
    text = out.read_text()
    top = text.split("# === inlined")[0]
    assert "group_normalized_advantages/matches-reference" in top
    assert "def eq_group_normalized_advantages" in top and "float.fromhex" in top
    assert text.index("def inputs") < text.index("def expected") < text.index("def actual") \
        < text.index("VENDORED[")
    done = run_standalone(out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "REPRODUCED" in done.stdout and "<-" in done.stdout
    assert "max abs diff" in done.stdout
    assert finding.call.sample in text


def test_the_script_exits_1_once_the_framework_agrees(tmp_path, mutant_file):
    out = tmp_path / "gna.py"
    repro.write_repro(mutant_file, "group_normalized_advantages/matches-reference", out)
    text = out.read_text()
    broken = repr('        return _map_out(ref(*args, **kwargs), lambda o: 1.01 * o)\n')
    assert broken in text                            # the inlined mutant, fixed "upstream":
    out.write_text(text.replace(broken, broken.replace("1.01 * o", "o")))
    done = run_standalone(out)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "NOT REPRODUCED" in done.stdout


def test_a_gradient_script_compares_gradients(tmp_path):
    path = tmp_path / "detached.py"
    path.write_text("from conformance.checks.templates import mutant_adapter\n"
                    "broken = mutant_adapter('ppo_clip_loss~detached')\n")
    out = tmp_path / "ppo.py"
    repro.write_repro(f"{path}:broken", "ppo_clip_loss/gradient-matches-reference", out)
    done = run_standalone(out)
    assert done.returncode == 0, done.stdout + done.stderr
    value, gradient = done.stdout.split("gradient w.r.t. argument 0")
    assert "<-" not in value and "<-" in gradient


def test_the_inlined_closure_is_the_adapters_imports_only():
    modules = repro.vendored_closure(repro.adapter_target("refimpl"))
    assert "conformance.adapters.reference" in modules and "refimpl.group" in modules
    assert not any(m.startswith(("conformance.checks", "conformance.runner", "conformance.cli"))
                   for m in modules)
    trl = repro.vendored_closure(repro.adapter_target("conformance.adapters.trl:trl_grpo"))
    assert {"conformance.adapters.support", "conformance.adapters.pins",
            "conformance.contract"} <= set(trl)


# --- bulk mode ------------------------------------------------------------------------------------

def _row(id, status, cls="absent", kind="reference"):
    row = {"id": id, "estimator": id.split("/")[0], "kind": kind, "status": status}
    if cls != "absent":
        row["class"] = cls
    return row


@pytest.mark.parametrize("row,wanted", [
    (_row("gae/matches-reference", "xfail", "gradient"), True),
    (_row("dpo_loss/matches-reference", "fail", "value"), True),
    (_row("gae/padding-nan", "xfail", "padding"), False),
    (_row("gae/matches-reference", "pass", None), False),
    (_row("gae/matches-reference", "error", None), False),
    (_row("gae/matches-reference", "xfail"), True),                    # a report before classes
    (_row("gae/padding-nan", "xfail", kind="property"), False),
    (_row("gae/rejects-lam-outside-unit-interval", "xfail", kind="input"), False),
    (_row("token_logprobs/matches-reference", "xfail"), False),
])
def test_which_rows_get_a_script(row, wanted):
    assert repro.eligible(row) is wanted


def test_bulk_writes_one_script_per_finding_and_removes_stale_ones(tmp_path, mutant_file):
    reports, out = tmp_path / "reports", tmp_path / "repro"
    reports.mkdir()
    rows = [_row("group_normalized_advantages/matches-reference", "xfail", "value"),
            _row("group_normalized_advantages/padding-nan", "xfail", "padding"),
            _row("group_normalized_advantages/dtype-kept", "pass", None)]
    (reports / "mutant.json").write_text(json.dumps({"adapter": "mutant", "seed": 0,
                                                     "checks": rows}))
    (reports / "comparison.json").write_text(json.dumps({"adapters": []}))
    stale = out / "mutant" / "gae__matches-reference.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("stale")
    written, missed = repro.bulk(reports, out, specs={"mutant": mutant_file}, log=lambda s: None)
    assert written == [repro.script_path(out, "mutant",
                                         "group_normalized_advantages/matches-reference")]
    assert not missed and not stale.exists() and written[0].is_file()


def test_bulk_says_which_rows_it_could_not_reproduce(tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "refimpl.json").write_text(json.dumps(
        {"adapter": "refimpl", "seed": 0,
         "checks": [_row("gae/matches-reference", "xfail", "gradient")]}))
    written, missed = repro.bulk(reports, tmp_path / "out", log=lambda s: None)
    assert written == [] and len(missed) == 1 and "agrees with refimpl" in missed[0]


# --- frameworks (only where installed) ------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl not installed here")
def test_trl_group_advantages_eps_reproduces_standalone(tmp_path):
    out = tmp_path / "trl.py"
    repro.write_repro("trl-grpo", "group_normalized_advantages/matches-reference", out)
    assert "1e-4" in out.read_text().split('"""')[1]          # the declared sentence, on top
    done = run_standalone(out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "REPRODUCED" in done.stdout and "trl 1.16.0" in done.stdout


@pytest.mark.skipif(importlib.util.find_spec("verl") is None, reason="verl not installed here")
def test_verl_gae_reproduces_standalone(tmp_path):
    out = tmp_path / "verl.py"
    repro.write_repro("verl", "gae/matches-reference", out)
    done = run_standalone(out)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(importlib.util.find_spec("openrlhf") is None,
                    reason="openrlhf not installed here")
def test_openrlhf_kl_reproduces_standalone(tmp_path):
    out = tmp_path / "openrlhf.py"
    repro.write_repro("openrlhf", "kl_estimate/matches-reference", out)
    done = run_standalone(out)
    assert done.returncode == 0, done.stdout + done.stderr
