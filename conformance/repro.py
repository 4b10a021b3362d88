"""Reproductions to send upstream: a standalone script that shows one deviation on the framework's
own function, runnable by a maintainer who has torch and the framework but not rlconform.

    rlconform repro ADAPTER CHECK_ID --out FILE [--seed N]
    python -m conformance.repro --reports reports --out reports/repro [--adapters NAME ...]

How a script is made (``write_repro``):

1. The check runs once, in-process, as ``runner.run_check`` runs it (same ``Context``, same seed),
   and its ``Context.recorded`` keeps a copy of every adapter call, its arguments taken after
   ``ctx.resolve`` (the call the adapter really got); the failing sample's calls come first.
2. The failing sample is the first recorded call on which the adapter's output (and, for a
   function with differentiable inputs, ``templates.OPS[fn].diff``, the gradient of the output
   weighted as the gradient checks weight it) differs from ``refimpl``'s on the same inputs by
   more than the check's tolerance at the output's precision (``chk.tol.of(dtype)``, scaled by
   max(1, |expected|) as ``Context.compare`` does). No such call: ``NoDifference``, and no script.
3. The script is written top-down for a reader: the check, the framework and version, the
   declared sentence and upstream link, the inputs (every float written exactly, as
   ``float.hex``), the call, the expected value computed in the script from the contract's
   equation (``EQUATIONS``: one small plain-torch function per canonical function, kept equal to
   refimpl by tests/test_repro.py), the actual value, and a side-by-side table. Its exit status
   is 0 when the difference is reproduced and 1 when the framework now agrees.
4. What the adapter needs to reach the framework's function (its stubs, config objects, layout
   helpers) is inlined at the end of the script: the adapter's module and the closure of the
   ``conformance`` and ``refimpl`` modules it imports (found by reading their import statements),
   served to ``import`` by a meta-path finder placed first on ``sys.meta_path``. A module outside
   that closure (the harness, the checks) cannot be imported from the script at all.

Bulk mode writes one script per ``fail``/``xfail`` row of class ``gradient`` or ``value`` of the
named adapters' committed reports, at ``<out>/<adapter>/<check id, "/" -> "__">.py``
(``script_path``), replacing that adapter's previous scripts.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import fnmatch
import importlib.util
import inspect
import json
import math
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import refimpl
from conformance.checks import all_checks
from conformance.checks.templates import OPS, gradient_weights, weighted_grads
from conformance.context import CheckFailed, Context, RecordedCall, relative_errors
from conformance.loading import (
    AdapterLoadError,
    _is_file_spec,
    load_adapter,
    registered_adapters,
)
from conformance.registry import REGISTRY, Check
from conformance.report import repro_file
from conformance.runner import _declared, check_seed

#: the packages of this project that a script carries inlined (never the framework, never torch)
VENDORED_PACKAGES = ("conformance", "refimpl")

#: the functions whose deviations the bulk mode reproduces when a report row has no ``class``
#: (reports made before the five classes): losses, advantages, returns and KL estimates
LOSS_OR_ADVANTAGE = ("discounted_returns", "gae", "kl_penalized_rewards",
                     "group_normalized_advantages", "leave_one_out_advantages",
                     "batch_normalized_advantages", "kl_estimate", "policy_gradient_loss",
                     "ppo_clip_loss", "value_loss", "bradley_terry_loss", "dpo_loss", "ipo_loss")
#: the classes (docs/contract.md, "Certification and statuses") that get a script
REPRODUCED_CLASSES = ("gradient", "value")


class ReproError(Exception):
    """A reproduction cannot be written; the message is one line for the user."""


class NoDifference(ReproError):
    """No recorded call of the check differs from refimpl: nothing to show upstream."""


# --- the contract's equations, in plain torch -----------------------------------------------------
# Each is what the script prints as "expected": short enough to read beside the framework's code,
# self-contained (torch only; one may call another eq_ function, which the script then carries
# too). tests/test_repro.py checks each against refimpl for every option value.

def eq_discounted_returns(rewards, mask, gamma=1.0):
    """G_t = r_t + gamma * G_{t+1}; G = 0 after each row's last real token and at padding."""
    r = torch.where(mask, rewards, torch.zeros_like(rewards))
    G, cols = torch.zeros_like(r[:, 0]), []
    for t in reversed(range(r.shape[1])):
        G = torch.where(mask[:, t], r[:, t] + gamma * G, torch.zeros_like(G))
        cols.append(G)
    return torch.stack(cols[::-1], dim=1)


def eq_gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """delta_t = r_t + gamma V_{t+1} - V_t (V = 0 after the last real token),
    A_t = delta_t + gamma lam A_{t+1}; returns (A, A + V), both 0 at padding."""
    zero = torch.zeros_like(rewards)
    r, V = torch.where(mask, rewards, zero), torch.where(mask, values, zero)
    A_next, V_next, cols = zero[:, 0], zero[:, 0], []
    for t in reversed(range(r.shape[1])):
        A = r[:, t] + gamma * V_next - V[:, t] + gamma * lam * A_next
        A = torch.where(mask[:, t], A, zero[:, 0])
        cols.append(A)
        A_next, V_next = A, V[:, t]
    A = torch.stack(cols[::-1], dim=1)
    return A, torch.where(mask, A + V, zero)


def eq_kl_estimate(logp, ref_logp, mask=None, kind="k3"):
    """l = logp - ref_logp; k1 = l, k2 = l^2 / 2, k3 = exp(-l) - 1 + l; 0 at padding."""
    if mask is None:
        l = logp - ref_logp
    else:
        zero = torch.zeros_like(logp)
        l = torch.where(mask, logp, zero) - torch.where(mask, ref_logp, zero)
    k = {"k1": lambda: l, "k2": lambda: 0.5 * l ** 2, "k3": lambda: torch.exp(-l) - 1.0 + l}[kind]()
    return k if mask is None else torch.where(mask, k, torch.zeros_like(k))


def eq_kl_penalized_rewards(scores, logp, ref_logp, mask, beta, kind="k1"):
    """r_t = -beta * k(l_t) on real tokens, plus the score on each row's last real token."""
    rewards = -beta * eq_kl_estimate(logp, ref_logp, mask, kind)
    last = mask.sum(dim=1) - 1
    at_last = torch.arange(mask.shape[1]).unsqueeze(0) == last.unsqueeze(1)
    return rewards + torch.where(at_last, scores.unsqueeze(1), torch.zeros_like(rewards))


def eq_group_normalized_advantages(scores, group_ids, scale="group", eps=1e-6):
    """A_i = (s_i - mean_g) / (std_g + eps) (scale group; std unbiased), / (std_batch + eps)
    (scale batch), or s_i - mean_g (scale none). Scores are shifted by the group's minimum
    first, so an all-equal group gives exactly 0."""
    out = torch.zeros_like(scores)
    std_batch = scores.std()
    for g in torch.unique(group_ids):
        member = group_ids == g
        x = scores[member] - scores[member].min()
        centred = x - x.sum() / len(x)
        if scale == "group":
            centred = centred / (((centred ** 2).sum() / (len(x) - 1)).sqrt() + eps)
        elif scale == "batch":
            centred = centred / (std_batch + eps)
        out[member] = centred
    return out


def eq_leave_one_out_advantages(scores, group_ids):
    """A_i = s_i - (sum of the other scores of i's group) / (n_g - 1)."""
    out = torch.zeros_like(scores)
    for g in torch.unique(group_ids):
        member = group_ids == g
        x = scores[member] - scores[member].min()
        out[member] = x - (x.sum() - x) / (len(x) - 1)
    return out


def eq_batch_normalized_advantages(advantages, mask=None, eps=1e-8):
    """(A - mu) / sqrt(var + eps), mu and var (divisor n - 1) over the real entries; 0 at
    padding."""
    m = torch.ones_like(advantages, dtype=torch.bool) if mask is None else mask
    zero = torch.zeros_like(advantages)
    A = torch.where(m, advantages, zero)
    n = m.sum().to(A.dtype)
    mu = A.sum() / n
    var = torch.where(m, (A - mu) ** 2, zero).sum() / (n - 1)
    return torch.where(m, (A - mu) / torch.sqrt(var + eps), zero)


def eq_aggregate(values, mask, mode="token-mean", norm_len=None):
    """token-mean: sum m x / sum m; seq-mean-token-mean: mean_b (sum_t m x / sum_t m);
    seq-mean-token-sum: mean_b sum_t m x; seq-mean-token-sum-norm: sum m x / (B * norm_len),
    norm_len defaulting to T."""
    x = torch.where(mask, values, torch.zeros_like(values))
    lengths = mask.sum(dim=1).to(x.dtype)
    if mode == "token-mean":
        return x.sum() / lengths.sum()
    if mode == "seq-mean-token-mean":
        return (x.sum(dim=1) / lengths).mean()
    if mode == "seq-mean-token-sum":
        return x.sum(dim=1).mean()
    return x.sum() / (x.shape[0] * (x.shape[1] if norm_len is None else norm_len))


def eq_policy_gradient_loss(logp, advantages, mask, agg="token-mean", norm_len=None):
    """aggregate(-A * logp); a (B,) advantage applies to every token of its row."""
    zero = torch.zeros_like(logp)
    A = advantages.unsqueeze(-1).expand_as(logp) if advantages.dim() == 1 else advantages
    return eq_aggregate(-torch.where(mask, A, zero) * torch.where(mask, logp, zero), mask, agg,
                        norm_len)


def eq_ppo_clip_loss(logp, old_logp, advantages, mask, clip_low=0.2, clip_high=None,
                     dual_clip=None, agg="token-mean", norm_len=None):
    """r = exp(logp - old_logp); loss_t = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high));
    with dual_clip c: min(loss_t, -c A) where A < 0; then aggregate."""
    zero = torch.zeros_like(logp)
    A = advantages.unsqueeze(-1).expand_as(logp) if advantages.dim() == 1 else advantages
    A = torch.where(mask, A, zero)
    ratio = torch.exp(torch.where(mask, logp, zero) - torch.where(mask, old_logp, zero))
    high = clip_low if clip_high is None else clip_high
    loss = torch.maximum(-A * ratio, -A * torch.clamp(ratio, 1.0 - clip_low, 1.0 + high))
    if dual_clip is not None:
        loss = torch.where(A < 0, torch.minimum(loss, -dual_clip * A), loss)
    return eq_aggregate(loss, mask, agg, norm_len)


def eq_value_loss(values, old_values, returns, mask, clip=None, agg="token-mean", norm_len=None):
    """aggregate(0.5 (V - R)^2); with clip e: aggregate(0.5 max((V - R)^2,
    (V_old + clamp(V - V_old, -e, e) - R)^2))."""
    zero = torch.zeros_like(values)
    V, V_old, R = (torch.where(mask, x, zero) for x in (values, old_values, returns))
    loss = (V - R) ** 2
    if clip is not None:
        loss = torch.maximum(loss, (V_old + torch.clamp(V - V_old, -clip, clip) - R) ** 2)
    return eq_aggregate(0.5 * loss, mask, agg, norm_len)


def eq_bradley_terry_loss(chosen_rewards, rejected_rewards, margin=None):
    """-log sigmoid(r_chosen - r_rejected - margin), per pair."""
    delta = chosen_rewards - rejected_rewards
    return -F.logsigmoid(delta if margin is None else delta - margin)


def eq_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                beta=0.1, label_smoothing=0.0):
    """z = beta ((pc - rc) - (pr - rr)); loss = -(1 - ls) log sigmoid(z) - ls log sigmoid(-z)."""
    z = beta * ((policy_chosen_logps - ref_chosen_logps)
                - (policy_rejected_logps - ref_rejected_logps))
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def eq_ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                tau=0.1):
    """(h - 1 / (2 tau))^2 with h = (pc - rc) - (pr - rr)."""
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return (h - 1.0 / (2.0 * tau)) ** 2


def eq_token_logprobs(logits, tokens):
    """log_softmax(logits)[b, t, tokens[b, t]]."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)


def eq_sequence_logprob(token_logp, mask):
    """sum_t m_t log pi(y_t)."""
    return torch.where(mask, token_logp, torch.zeros_like(token_logp)).sum(dim=1)


#: canonical function -> its equation in plain torch (what a script prints as "expected")
EQUATIONS = {name: globals()[f"eq_{name}"] for name in refimpl.CANONICAL}


# --- recording a check's adapter calls ------------------------------------------------------------

def _snapshot(x):
    return x.detach().clone() if isinstance(x, torch.Tensor) else x


def record_calls(chk: Check, adapter, seed: int = 0) -> list[RecordedCall]:
    """Run ``chk`` on ``adapter`` as ``runner.run_check`` does and return every adapter call it
    made (``Context.recorded``: after ``ctx.resolve``, inputs copied before the call), those of
    the sample the check failed on first: that is the difference the report shows."""
    ctx = Context(chk, adapter, seed=check_seed(seed, chk.id))
    torch.manual_seed(ctx.seed)
    failed = None
    try:
        chk.body(ctx)
    except CheckFailed as exc:
        failed = exc.sample
    except Exception:                                                 # noqa: BLE001
        pass                        # the outcome is the runner's business; the calls are ours
    return ([c for c in ctx.recorded if failed is not None and c.sample == failed]
            + [c for c in ctx.recorded if failed is None or c.sample != failed])


# --- the failing sample ---------------------------------------------------------------------------

def _outputs(out) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _excess(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> float:
    """The worst error as ``Context.compare`` scales it (``relative_errors``: |a - e| /
    max(1, |e|), a non-finite value that differs counting as infinite); 0 when within tol."""
    if actual.shape != expected.shape:
        return float("inf")
    err = relative_errors(actual, expected)
    worst = float(err.max()) if err.numel() else 0.0
    return worst if worst > tol else 0.0


@dataclass
class Finding:
    """The failing sample: the call, what the adapter and refimpl give on it, and by how much."""
    check: Check
    call: RecordedCall
    diff: tuple                              # positions of the differentiated arguments
    weights: list                            # gradient weights (empty without diff)
    value_excess: float
    gradient_excess: float
    tolerance: dict                          # "float64"/"float32" -> the check's tolerance


def _differs(chk: Check, adapter, call: RecordedCall) -> Finding | None:
    name = chk.estimator
    op = OPS.get(name)
    diff = tuple(i for i in (op.diff if op else ())
                 if i < len(call.args) and isinstance(call.args[i], torch.Tensor)
                 and call.args[i].is_floating_point())

    def fresh():
        args = [_snapshot(a) for a in call.args]
        for i in diff:
            args[i] = args[i].requires_grad_(True)
        return args, {k: _snapshot(v) for k, v in call.kwargs.items()}

    try:
        ref_args, kwargs = fresh()
        refs = _outputs(getattr(refimpl, name)(*ref_args, **kwargs))
    except Exception:                                                 # noqa: BLE001
        return None                           # refimpl rejects the input: no expected value
    try:
        args, kwargs = fresh()
        outs = _outputs(getattr(adapter, name)(*args, **kwargs))
    except Exception:                                                 # noqa: BLE001
        return None
    if len(outs) != len(refs) or not all(isinstance(o, torch.Tensor) and o.is_floating_point()
                                         and o.shape == r.shape for o, r in zip(outs, refs)):
        return None                           # malformed output: an error row, not a finding
    value = max(_excess(o, r, chk.tol.of(o.dtype)) for o, r in zip(outs, refs))
    gradient, weights = 0.0, []
    if diff:
        weights = gradient_weights(refs)
        got = weighted_grads(outs, [args[i] for i in diff], weights)
        want = weighted_grads(refs, [ref_args[i] for i in diff], weights)
        gradient = max(_excess(g, w, chk.tol.of(outs[0].dtype)) for g, w in zip(got, want))
    if value == 0.0 and gradient == 0.0:
        return None
    return Finding(chk, call, diff, [w.detach() for w in weights], value, gradient,
                   {"float64": chk.tol.float64, "float32": chk.tol.float32})


def find_failing_call(chk: Check, adapter, seed: int = 0) -> Finding:
    """The first recorded call of ``chk`` on which ``adapter`` differs from refimpl beyond the
    check's tolerance; ``NoDifference`` if none does."""
    if chk.estimator not in EQUATIONS:
        raise ReproError(f"{chk.id} is about {chk.estimator}, which is not a canonical function")
    calls = record_calls(chk, adapter, seed)
    for call in calls:
        found = _differs(chk, adapter, call)
        if found is not None:
            return found
    raise NoDifference(f"{getattr(adapter, 'name', 'the adapter')} agrees with refimpl on all "
                       f"{len(calls)} call(s) of {chk.id} (seed {seed}): nothing to reproduce")


# --- what the script inlines ----------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """Where the adapter object lives: a module (by import name) and an attribute path in it."""
    module: str
    attr: str                                # "" when the module itself is the adapter
    path: Path                               # the module's source file


def _module_file(name: str) -> tuple[Path, bool] | None:
    """(source file, is a package) of an importable module, or None."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin), spec.submodule_search_locations is not None


def adapter_target(spec: str) -> Target:
    """The module and attribute an adapter spec names (docs/contract.md, "Naming an adapter")."""
    eps = registered_adapters()
    if ":" not in spec and spec in eps:
        spec = eps[spec].value.replace(" ", "")
    target, _, attr = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if _is_file_spec(target):
        path = Path(target).expanduser().resolve()
        stem = "".join(c if c.isalnum() else "_" for c in path.stem)
        return Target(f"_repro_adapter_{stem}", attr, path)
    found = _module_file(target)
    if found is None:
        raise ReproError(f"cannot find the source of module {target!r} to inline it")
    return Target(target, attr, found[0])


def _imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """The modules of VENDORED_PACKAGES that ``source`` imports, anywhere in it (a function-level
    import runs too, when that function is called): ``import a.b``, ``from a import b`` (b a
    module or a name in a), relative imports resolved."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    tree = ast.parse(source)
    # a module imported inside an adapter's train_step / train_run serves the trainer only: a
    # function-level reproduction never calls them, so it is not vendored
    lazy = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            and f.name in ("train_step", "train_run")
            for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names if a.name != "*"]
        else:
            continue
        for name in names:
            if id(node) in lazy:
                continue
            if name.split(".")[0] in VENDORED_PACKAGES and _module_file(name) is not None:
                out.add(name)
    return out


def vendored_closure(target: Target) -> dict[str, tuple[bool, str]]:
    """module name -> (is a package, source) for the adapter's module and every module of
    VENDORED_PACKAGES it needs, with their parent packages (a package's ``__init__`` runs first)."""
    first = target.path.read_text()
    out: dict[str, tuple[bool, str]] = {}
    todo = [(target.module, target.path, False, first)]
    while todo:
        name, _, is_package, source = todo.pop()
        if name in out:
            continue
        out[name] = (is_package, source)
        wanted = _imported_modules(source, name, is_package)
        for dep in list(wanted):
            parts = dep.split(".")
            wanted.update(".".join(parts[:i]) for i in range(1, len(parts)))
        if "." in name and name.split(".")[0] in VENDORED_PACKAGES:
            parts = name.split(".")
            wanted.update(".".join(parts[:i]) for i in range(1, len(parts)))
        for dep in sorted(wanted - set(out)):
            dep_path, dep_pkg = _module_file(dep)
            todo.append((dep, dep_path, dep_pkg, dep_path.read_text()))
    return out


# --- writing the script ---------------------------------------------------------------------------

def _dtype(t: torch.Tensor) -> str:
    return f"torch.{str(t.dtype).replace('torch.', '')}"


def tensor_literal(t: torch.Tensor, indent: str = "    ", comment: bool = True) -> str:
    """Python source that rebuilds ``t`` exactly: floats as ``float.hex`` strings (NaN and inf
    included; with ``comment``, a comment line of rounded decimals follows, so the literal must
    end a statement), bools and integers as nested lists."""
    t = t.detach().cpu()
    shape = tuple(t.shape)
    if t.is_floating_point():
        hexes = [float(v).hex() for v in t.to(torch.float64).flatten().tolist()] \
            if t.dtype != torch.float64 else [v.hex() for v in t.flatten().tolist()]
        body = textwrap.fill(", ".join(repr(h) for h in hexes), 96,
                             initial_indent=indent + "    ", subsequent_indent=indent + "    ")
        approx = torch.tensor(t.to(torch.float64).tolist(), dtype=torch.float64)
        shown = " ".join(f"{v:.6g}" for v in approx.flatten().tolist())
        note = textwrap.fill(f"~ {shown}", 96, initial_indent=indent + "# ",
                                subsequent_indent=indent + "#   ")
        code = f"exact([\n{body}\n{indent}], {_dtype(t)}, {shape})"
        return f"{code}\n{note}" if comment else code
    values = textwrap.fill(repr(t.tolist()), 96, initial_indent=indent + "    ",
                           subsequent_indent=indent + "    ", break_long_words=False)
    return f"torch.tensor(\n{values},\n{indent}dtype={_dtype(t)})"


def _value_literal(v, indent="    ", comment=True) -> str:
    if isinstance(v, torch.Tensor):
        return tensor_literal(v, indent, comment)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else f"float({str(v)!r})"
    return repr(v)


def script_path(out_dir: str | Path, adapter: str, check_id: str) -> Path:
    """Where the bulk mode (and the comparison report's link) puts a script."""
    return Path(out_dir) / repro_file(adapter, check_id)


def _equation_sources(name: str) -> str:
    """The source of ``eq_<name>`` and of every other ``eq_`` function it calls."""
    wanted, order = [name], []
    while wanted:
        fn = wanted.pop()
        if fn in order:
            continue
        order.append(fn)
        src = inspect.getsource(EQUATIONS[fn])
        wanted += [other for other in EQUATIONS if other != fn and f"eq_{other}(" in src]
    return "\n\n".join(inspect.getsource(EQUATIONS[fn]) for fn in reversed(order))


def _docline(fn) -> str:
    """The equation an ``eq_`` function states in its docstring (its first paragraph)."""
    return " ".join((inspect.getdoc(fn) or fn.__name__).split("\n\n")[0].split())


def _framework_versions(adapter) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in (getattr(adapter, "framework", None) or {}):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _rlconform_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("rlconform")
    except PackageNotFoundError:
        return refimpl.__version__


def _upstream(adapter, check_id: str) -> str | None:
    for pattern, url in (getattr(adapter, "upstream", None) or {}).items():
        if fnmatch.fnmatchcase(check_id, pattern):
            return url
    return None


def _param_names(name: str, n_args: int) -> list[str]:
    params = list(inspect.signature(getattr(refimpl, name)).parameters)
    return params[:n_args] + [f"arg{i}" for i in range(len(params), n_args)]


def _vendored_block(modules: dict[str, tuple[bool, str]]) -> str:
    parts = []
    for name in sorted(modules):
        is_package, source = modules[name]
        lines = "\n".join(f"    {line!r}" for line in source.splitlines(keepends=True))
        parts.append(f"VENDORED[{name!r}] = ({is_package!r}, ''.join([\n{lines}\n]))")
    return "\n\n".join(parts)


def render_script(spec: str, adapter, finding: Finding, seed: int = 0) -> str:
    """The standalone script for ``finding`` (see the module docstring, step 3)."""
    chk, call = finding.check, finding.call
    name = chk.estimator
    target = adapter_target(spec)
    modules = vendored_closure(target)
    declared = _declared(adapter, chk.id)
    upstream = _upstream(adapter, chk.id)
    versions = _framework_versions(adapter)
    framework = getattr(adapter, "framework", None) or {}
    adapter_name = getattr(adapter, "name", spec)
    params = _param_names(name, len(call.args))

    def wrap(label, text):
        return textwrap.fill(text, 96, initial_indent=f"{label:<11}", subsequent_indent=" " * 11)

    header = [wrap("Check:", f"{chk.id} ({chk.kind}; rlconform {_rlconform_version()})"),
              wrap("Equation:", chk.equation if not chk.equation.startswith(("values of",
                                                                             "autograd gradients"))
                   else _docline(EQUATIONS[name])),
              wrap("Framework:", ", ".join(f"{p} {v}" for p, v in versions.items()) or "(none)"),
              wrap("Adapter:", f"{adapter_name} (rlconform's conformance/adapters code that "
                               "calls the framework, inlined at the end of this file)"),
              wrap("Declared:", declared or "(no declared deviation)"),
              wrap("Upstream:", upstream or "(no issue or pull request known)"),
              wrap("Sample:", f"{call.sample} (seed {seed}), the first call of the check on which "
                              "the framework differs from the contract")]
    tensors = "\n".join(f"    {p} = {_value_literal(a)}" for p, a in zip(params, call.args))
    options = "{" + ", ".join(f"{k!r}: {_value_literal(v, comment=False)}"
                              for k, v in call.kwargs.items()) + "}"
    weights = ("[\n" + ",\n".join(f"        {tensor_literal(w, '        ', comment=False)}"
                                  for w in finding.weights) + "\n    ]") if finding.diff else "[]"
    getter = (f"getattr(module, {target.attr!r})" if target.attr and "." not in target.attr
              else f"functools.reduce(getattr, {target.attr.split('.')!r}, module)"
              if target.attr else "module")
    doc = '"""Reproduction of a deviation from the rlconform contract (docs/contract.md).\n\n' \
          + "\n".join(header) + "\n\n" + textwrap.fill(
              "Needs only torch and the framework; run it as `python FILE`. Exit status 0: the "
              "difference is reproduced; 1: the framework now agrees with the contract.", 96) \
          + '\n"""'
    return SCRIPT.format(
        doc=doc, check_id=chk.id, adapter=adapter_name, framework=framework,
        tol64=finding.tolerance["float64"], tol32=finding.tolerance["float32"],
        tensors=tensors, params=", ".join(params), options=options, diff=finding.diff,
        weights=weights, fn=name, equation=_equation_sources(name), module=target.module,
        getter=getter, vendored=_vendored_block(modules))


SCRIPT = '''#!/usr/bin/env python3
{doc}

import functools
import importlib.abc
import importlib.util
import sys

import torch
import torch.nn.functional as F

CHECK = {check_id!r}
ADAPTER = {adapter!r}
FRAMEWORK = {framework!r}
#: the check's tolerance: |actual - expected| / max(1, |expected|), at the actual output's precision
TOLERANCE = {{torch.float64: {tol64!r}, torch.float32: {tol32!r}}}
#: positions of the arguments the gradient is taken with respect to (empty: values only)
DIFF = {diff!r}


def exact(hexes, dtype, shape):
    """A tensor from exact float.hex strings."""
    return torch.tensor([float.fromhex(h) for h in hexes], dtype=dtype).reshape(shape)


# --- the failing sample ----------------------------------------------------------------------

def inputs():
{tensors}
    return [{params}], {options}


# --- what the contract says (the equation, in plain torch) -------------------------------------

{equation}

def expected(args, kwargs):
    return eq_{fn}(*args, **kwargs)


# --- what the framework does (through the adapter code inlined below) ---------------------------

def actual(args, kwargs):
    module = __import__({module!r}, fromlist=["_"])
    adapter = {getter}
    if isinstance(adapter, type):                   # a class names the adapter: an instance of it
        adapter = adapter()
    return getattr(adapter, {fn!r})(*args, **kwargs)


# --- side by side ------------------------------------------------------------------------------

def gradient_weights():
    """The gradient compared is that of sum_k <output_k, w_k> (the check's weights)."""
    return {weights}


def outputs(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def grads(outs, args):
    inputs = [args[i] for i in DIFF]
    total = sum((o * w.to(o.dtype)).sum() for o, w in zip(outs, gradient_weights()))
    if not isinstance(total, torch.Tensor) or not total.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    gs = torch.autograd.grad(total, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, gs)]


def side_by_side(what, got, want, tol, rows=24):
    """Print expected and actual entry by entry (the worst ones if many); True if they differ."""
    a, e = got.detach().to(torch.float64).flatten(), want.detach().to(torch.float64).flatten()
    err = ((a - e).abs() / e.abs().clamp(min=1.0)).nan_to_num(0.0)
    err = torch.where(~torch.isfinite(a) & torch.isfinite(e), torch.full_like(err, float("inf")),
                      err)
    order = (range(len(e)) if len(e) <= rows
             else err.argsort(descending=True)[:rows].sort().values.tolist())
    print(f"\\n{{what}} ({{str(got.dtype)[6:]}}, shape {{tuple(got.shape)}}):")
    print(f"  {{'entry':>8}}  {{'expected (contract)':>24}}  {{'actual (framework)':>24}}  "
          f"{{'|diff|':>10}}")
    for i in order:
        index = ([int(x) for x in torch.unravel_index(torch.tensor(i), want.shape)]
                 if want.dim() else [])
        mark = "  <-" if float(err[i]) > tol else ""
        print(f"  {{str(index):>8}}  {{float(e[i]):>24.17g}}  {{float(a[i]):>24.17g}}  "
              f"{{float((a[i] - e[i]).abs()):>10.3g}}{{mark}}")
    if len(e) > rows:
        print(f"  ({{len(e) - rows}} more entries, all closer)")
    diff = (a - e).abs().nan_to_num(float("inf"))
    worst = float(err.max()) if len(err) else 0.0
    print(f"  max abs diff {{float(diff.max()) if len(diff) else 0.0:.3g}}; "
          f"max diff / max(1, |expected|) "
          f"{{worst:.3g}} (tolerance {{tol:g}})")
    return worst > tol


def main():
    install_vendored()
    versions = []
    for pkg in FRAMEWORK:
        try:
            from importlib.metadata import version
            versions.append(f"{{pkg}} {{version(pkg)}}")
        except Exception:
            versions.append(f"{{pkg}} (version unknown)")
    print(f"{{CHECK}} on {{ADAPTER}} ({{', '.join(versions) or 'no framework'}}; "
          f"torch {{torch.__version__}})")
    args, kwargs = inputs()
    for i in DIFF:
        args[i] = args[i].clone().requires_grad_(True)
    want = outputs(expected(args, kwargs))
    got_args = [a.detach().clone().requires_grad_(True) if i in DIFF else a
                for i, a in enumerate(args)]
    got = outputs(actual(got_args, kwargs))
    differs = False
    for k, (g, w) in enumerate(zip(got, want)):
        label = "value" if len(want) == 1 else f"output {{k}}"
        differs |= side_by_side(label, g, w, TOLERANCE.get(g.dtype, TOLERANCE[torch.float32]))
    if DIFF:
        tol = TOLERANCE.get(got[0].dtype, TOLERANCE[torch.float32])
        for i, g, w in zip(DIFF, grads(got, got_args), grads(want, args)):
            differs |= side_by_side(f"gradient w.r.t. argument {{i}}", g, w, tol)
    if differs:
        print("\\nREPRODUCED: the framework differs from the contract beyond the check's "
              "tolerance")
        return 0
    print("\\nNOT REPRODUCED: the framework now agrees with the contract on this sample")
    return 1


# === inlined: the adapter and the rlconform modules it imports ==================================
# The adapter's module (its stubs, config objects, layout helpers) and the closure of the
# conformance/refimpl modules it imports, as source. install_vendored() serves them to `import`
# ahead of anything installed, so this script never needs rlconform itself.

VENDORED = {{}}


class VendoredModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name in VENDORED:
            return importlib.util.spec_from_loader(name, self, origin=f"<inlined {{name}}>",
                                                   is_package=VENDORED[name][0])
        if name.split(".")[0] in {{n.split(".")[0] for n in VENDORED}}:
            raise ModuleNotFoundError(f"{{name}} is not inlined in this script", name=name)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        source = VENDORED[module.__name__][1]
        exec(compile(source, module.__spec__.origin, "exec"), module.__dict__)


def install_vendored():
    sys.meta_path.insert(0, VendoredModules())


{vendored}


if __name__ == "__main__":
    sys.exit(main())
'''


def write_repro(spec: str, check_id: str, out: str | Path, seed: int = 0, adapter=None) -> Finding:
    """Write the reproduction script of ``check_id`` on the adapter ``spec`` to ``out``.
    Raises ``AdapterLoadError``, ``ReproError`` (``NoDifference``: nothing to reproduce) or
    ``OSError``."""
    all_checks(thorough=True)
    chk = REGISTRY.get(check_id)
    if chk is None:
        close = difflib.get_close_matches(check_id, list(REGISTRY), n=5, cutoff=0.6)
        raise ReproError(f"no check {check_id!r}" + (f"; close: {', '.join(close)}" if close
                                                     else "; see `rlconform list`"))
    adapter = adapter if adapter is not None else load_adapter(spec)
    finding = find_failing_call(chk, adapter, seed)
    text = render_script(spec, adapter, finding, seed)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return finding


def check_writable(out: str | Path) -> str | None:
    """One line saying why ``out`` cannot be written (before any check runs), or None."""
    path = Path(out)
    if path.is_dir():
        return f"--out {out!r} is a directory; name the script file to write"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"--out {out!r}: {parent} is not a directory"
    import os
    if not os.access(parent, os.W_OK):
        return f"--out {out!r} cannot be written: {parent} is not writable"
    return None


# --- bulk mode: every reproducible row of the committed reports -----------------------------------

def eligible(row: dict) -> bool:
    """A fail/xfail row of class gradient or value; for a row without ``class`` (a report made
    before the classes), an xfail of a loss, advantage, return or KL function that is neither a
    padding, validation, mutation nor dtype check."""
    if row.get("status") not in ("fail", "xfail"):
        return False
    if row.get("kind") == "training":   # a trainer's step needs the framework's trainer and
        return False                    # models: its reproduction is the report's certify line
    if "class" in row and row["class"] is not None:
        return row["class"] in REPRODUCED_CLASSES
    if "class" in row:                          # a classed report, no class: not a finding
        return False
    check_name = row["id"].split("/", 1)[-1]
    return (row["status"] == "xfail" and row.get("estimator") in LOSS_OR_ADVANTAGE
            and row.get("kind") != "input" and not check_name.startswith("padding-")
            and check_name not in ("no-input-mutation", "dtype-kept"))


def bulk(reports: str | Path, out: str | Path, adapters: list[str] | None = None,
         seed: int | None = None, log=print, specs: dict | None = None
         ) -> tuple[list[Path], list[str]]:
    """Write a script for every eligible row of the reports in ``reports`` (only ``adapters``
    when given), replacing each processed adapter's previous scripts: one per check and
    declared sentence (the variant the framework's defaults select first), since variants that
    share a declaration show the same difference. A report's adapter is
    loaded by its name, or by ``specs[name]`` (an adapter spec) where given. Returns (scripts
    written, rows that could not be reproduced, each as one line)."""
    written: list[Path] = []
    missed: list[str] = []
    seen: set = set()           # (check id, declared sentence): one script per finding and check
    # the plain framework name (its defaults) first, then its variants
    for report in sorted(Path(reports).glob("*.json"), key=lambda p: ("-" in p.stem, p.stem)):
        try:
            data = json.loads(report.read_text())
        except ValueError:
            continue
        if not isinstance(data, dict) or "checks" not in data or "adapter" not in data:
            continue                                        # the comparison, or not a report
        name = data["adapter"]
        if adapters and name not in adapters:
            continue
        rows = [r for r in data["checks"] if eligible(r)]
        spec = (specs or {}).get(name, name)
        try:
            adapter = load_adapter(spec)
        except AdapterLoadError as exc:
            log(f"{name}: skipped, {exc}")
            continue
        folder = Path(out) / name
        for old in folder.glob("*.py") if folder.is_dir() else ():
            old.unlink()
        run_seed = data.get("seed", 0) if seed is None else seed
        for row in rows:
            key = (row["id"], row.get("deviation") or row.get("message"))
            if key in seen:
                continue                    # another variant already shows this finding
            path = script_path(out, name, row["id"])
            try:
                finding = write_repro(spec, row["id"], path, run_seed, adapter=adapter)
            except ReproError as exc:
                missed.append(f"{name} {row['id']}: {exc}")
                log(f"{name} {row['id']}: not reproduced: {exc}")
                continue
            written.append(path)
            seen.add(key)
            log(f"{name} {row['id']}: {path} (sample {finding.call.sample})")
    return written, missed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m conformance.repro",
                                description="write a reproduction script for every gradient- "
                                            "and value-class finding of the reports")
    p.add_argument("--reports", required=True, help="directory of certification reports (JSON)")
    p.add_argument("--out", required=True, help="directory for <adapter>/<check>.py")
    p.add_argument("--adapters", nargs="+", metavar="NAME",
                   help="only these adapters (default: every report's adapter that loads here)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed the inputs are drawn with (default: each report's)")
    args = p.parse_args(argv)
    if not Path(args.reports).is_dir():
        print(f"repro: --reports {args.reports!r} is not a directory", file=sys.stderr)
        return 2
    written, missed = bulk(args.reports, args.out, args.adapters, args.seed)
    print(f"wrote {len(written)} script(s) under {args.out}"
          + (f"; {len(missed)} row(s) not reproduced" if missed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
