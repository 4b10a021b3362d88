"""PNG figures for ``docs/sheet.md``, the executable RL-for-LLM reference sheet.

Every figure is drawn from numbers the sheet generator has already computed (or read from
committed training metrics) and passed in as plain Python lists and dicts; nothing here computes
an estimator. Only the document's text is compared in CI, never the PNG bytes, so the figures
may differ across matplotlib versions and platforms without failing anything. matplotlib is
imported lazily (Agg backend), so importing this module does not import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

_DPI = 110


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path | str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI, metadata={"Software": None})
    _plt().close(fig)


def _moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean of the last up-to-``window`` values at each position."""
    window = max(1, int(window))
    out: list[float] = []
    total = 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _set_yscale(ax: Any, series: Sequence[Sequence[float]]) -> None:
    """log when every value is > 0; symlog when the rest are >= 0 but some are 0; else linear."""
    values = [v for s in series for v in s]
    if values and all(v > 0 for v in values):
        ax.set_yscale("log")
    elif values and all(v >= 0 for v in values) and any(v > 0 for v in values):
        ax.set_yscale("symlog", linthresh=1e-6)


def _run_colours(*groups: dict[str, Any]) -> dict[str, Any]:
    """One tab10 colour per run name, assigned in sorted order of the union of names."""
    cmap = _plt().get_cmap("tab10")
    names = sorted(set().union(*(g.keys() for g in groups)))
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def clip_figure(path: Path | str, ratios: list[float], eps: float,
                curves: dict[str, tuple[list[float], list[float]]]) -> None:
    """PPO clipped objective and its gradient against the ratio, one line per advantage sign."""
    plt = _plt()
    fig, (ax_obj, ax_grad) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, (objective, gradient) in curves.items():
        ax_obj.plot(ratios, objective, label=label)
        ax_grad.plot(ratios, gradient, label=label)
    for ax in (ax_obj, ax_grad):
        for edge in (1 - eps, 1 + eps):
            ax.axvline(edge, color="grey", linestyle="--", linewidth=1)
        ax.axvspan(1 - eps, 1 + eps, color="grey", alpha=0.08)
        ax.set_xlabel("probability ratio r = pi / pi_old")
        ax.grid(alpha=0.3)
        ax.legend()
    ax_obj.set_title("PPO clipped objective min(r A, clip(r, 1-eps, 1+eps) A)")
    ax_obj.set_ylabel("objective")
    ax_grad.set_title("Gradient of the clipped objective")
    ax_grad.set_ylabel("d objective / d r")
    _save(fig, path)


def kl_figure(path: Path | str, log_ratios: list[float],
              estimators: dict[str, list[float]]) -> None:
    """Per-token KL estimators (k1, k2, k3) against the sampled token's log-ratio."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, values in estimators.items():
        ax.plot(log_ratios, values, label=name)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_title("Per-token KL estimators against the log-ratio")
    ax.set_xlabel("log-ratio l = log pi - log pi_ref (sampled token)")
    ax.set_ylabel("estimate (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def normalisation_figure(path: Path | str, group_sizes: list[int], group: dict[str, list[float]],
                         batch_sizes: list[int], batch: dict[str, list[float]]) -> None:
    """Exact bias of group estimators against G (left) and of global whitening against N (right)."""
    plt = _plt()
    fig, (ax_g, ax_b) = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (
        (ax_g, group_sizes, group, "group size G",
         "Group estimators: exact bias against group size"),
        (ax_b, batch_sizes, batch, "batch size N",
         "Global normalisation: exact bias against batch size"),
    )
    for ax, xs, series, xlabel, title in panels:
        for name, values in series.items():
            ax.plot(xs, values, marker="o", label=name)
        _set_yscale(ax, list(series.values()))
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("exact bias")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def learning_curves_figure(path: Path | str, rl: dict[str, tuple[list[int], list[float]]],
                           evals: dict[str, tuple[list[int], list[float]]],
                           window: int = 10) -> None:
    """Online RL training reward (moving average over raw) and greedy evaluation accuracy."""
    plt = _plt()
    colours = _run_colours(rl, evals)
    fig, (ax_rl, ax_ev) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, (steps, reward) in sorted(rl.items()):
        ax_rl.plot(steps, reward, color=colours[name], alpha=0.2, linewidth=0.8)
        ax_rl.plot(steps, _moving_average(reward, window), color=colours[name], label=name)
    for name, (steps, accuracy) in sorted(evals.items()):
        ax_ev.plot(steps, accuracy, color=colours[name], marker="o", label=name)
    ax_rl.set_title(f"Online RL: reward per step (moving average over {window})")
    ax_rl.set_ylabel("training reward")
    ax_ev.set_title("Greedy evaluation accuracy")
    ax_ev.set_ylabel("accuracy")
    for ax in (ax_rl, ax_ev):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    _save(fig, path)


def sweep_figure(path: Path | str, panels: dict[str, dict[str, tuple[list[int], list[float]]]],
                 window: int = 10) -> None:
    """One panel per knob, one moving-average reward line per value of the knob."""
    plt = _plt()
    ncols = max(1, min(3, len(panels)))
    nrows = max(1, -(-len(panels) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 3.6 * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, (knob, runs) in zip(flat, panels.items()):
        for value, (steps, reward) in runs.items():
            ax.plot(steps, _moving_average(reward, window), label=value)
        ax.set_title(knob)
        ax.set_xlabel("step")
        ax.set_ylabel("training reward")
        ax.grid(alpha=0.3)
        if runs:
            ax.legend(fontsize=8)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"Hyperparameter sweep: training reward per step (moving average over {window})")
    _save(fig, path)


__all__ = ["clip_figure", "kl_figure", "learning_curves_figure", "normalisation_figure",
           "sweep_figure"]
