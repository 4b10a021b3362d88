"""What every section of the sheet shares: links into the repository, the checks that enforce a
function, the tabular policy the exact claims are computed on, and exact per-sample gradients
(for variances by enumeration).

Links are written as seen from ``docs/sheet.md`` wherever the document is written, so that the
text does not depend on ``--out``.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

import torch

import refimpl
from refimpl.tabular import TabularPolicy

ROOT = Path(__file__).resolve().parents[2]
DTYPE = torch.float64


def rel(path: Path | str) -> str:
    """A repository path as linked from ``docs/``."""
    return "../" + Path(path).as_posix()


def where(fn) -> tuple[str, int]:
    """``(repository path, line)`` of a function's definition ("", 0 when it has none), relative
    to the directory that holds its top-level package, so that the link is the same whether the
    package is installed editable or not."""
    try:
        path = Path(inspect.getsourcefile(fn)).resolve()
        line = inspect.getsourcelines(fn)[1]
        package = importlib.import_module(fn.__module__.split(".")[0])
        base = Path(package.__file__).resolve().parent.parent
        return path.relative_to(base).as_posix(), line
    except (OSError, TypeError, ValueError, AttributeError, ImportError):
        return "", 0


def code_link(fn, label: str | None = None) -> str:
    path, line = where(fn)
    name = label or f"{fn.__module__}.{fn.__qualname__}"
    return f"[`{name}`]({rel(path)}#L{line})" if path else f"`{name}`"


def file_link(path: str, label: str | None = None) -> str:
    return f"[`{label or path}`]({rel(path)})"


def canonical(name: str):
    """A canonical function, looked up on ``refimpl`` at call time (so a patched one is used)."""
    return getattr(refimpl, name)


def checks_for(estimator: str) -> str:
    """The checks of the registry that enforce ``estimator``: the exact ones by id, then a count."""
    from conformance.checks import all_checks
    mine = [c for c in all_checks() if c.estimator == estimator]
    exact = [f"`{c.id}`" for c in mine if c.kind == "exact"]
    lead = ", ".join(exact) + "; " if exact else ""
    return f"{lead}[{len(mine)} checks in all](checks.md#{estimator})"


def policy(max_len: int = 2, n_prompts: int = 2, seed: int = 1) -> TabularPolicy:
    """The sheet's tabular policy: tokens {0, 1} plus EOS; 7 responses a prompt at max_len 2."""
    return TabularPolicy.random(n_prompts=n_prompts, n_tokens=2, max_len=max_len, seed=seed)


def scores_for(pol: TabularPolicy, seed: int = 3) -> torch.Tensor:
    """A score for every (prompt, response), standard normal, fixed by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(pol.n_prompts, pol.n_completions, generator=generator, dtype=DTYPE)


def token_jacobian(pol: TabularPolicy) -> torch.Tensor:
    """``(P, C, L, P*S*A)``: d log pi(y_t | y_<t, p) / d theta for every token of every response."""
    theta = pol.theta
    jac = torch.autograd.functional.jacobian(
        lambda th: _token_logp(pol, th), theta.detach().clone())
    P, C, L = jac.shape[:3]
    return jac.reshape(P, C, L, -1)


def _token_logp(pol: TabularPolicy, theta: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(theta, dim=-1)[:, pol.tree.state, pol.tree.tokens]
    return torch.where(pol.tree.mask, lp, torch.zeros_like(lp))


def per_row_gradients(pol: TabularPolicy, tup, coef: torch.Tensor,
                      jac: torch.Tensor) -> torch.Tensor:
    """``(K, P*S*A)``: each row's REINFORCE estimate of the ascent direction
    ``(1/N) sum_i sum_t A_{i,t} grad log pi(y_{i,t})``; ``coef`` is ``A`` as ``(K, N)`` (a score per
    sample) or ``(K, N, L)`` (per token)."""
    J = jac[tup.prompt, tup.completion]                                   # (K, N, L, D)
    A = coef.unsqueeze(-1) if coef.dim() == 2 else coef                   # (K, N, L or 1)
    A = torch.where(pol.tree.mask[tup.completion], A, torch.zeros_like(A))
    return (A.unsqueeze(-1) * J).sum(dim=2).mean(dim=1)


def moments(pol: TabularPolicy, tup, grads: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Exact mean ``(D,)`` and total variance ``E||g - E g||^2`` of per-row gradients."""
    w = pol.tuple_weights(tup)
    mean = (w.unsqueeze(1) * grads).sum(0)
    var = float((w * ((grads - mean) ** 2).sum(1)).sum())
    return mean, var


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_config(run_dir: Path) -> dict:
    return json.loads((run_dir / "config.json").read_text())
