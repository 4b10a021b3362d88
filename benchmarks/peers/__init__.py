"""The frameworks' own implementations, as the benchmark calls them.

One module per framework (``benchmarks/peers/<framework>.py``, the name of its adapter and of
``rlconform setup``), importable without the framework; it defines

    FRAMEWORK: str                       # the key in conformance.adapters.pins.PINS
    def available() -> bool              # the framework imports in this environment
    def entries() -> dict[str, Entry]    # function name -> how to call the framework's own code
    SKIPPED: dict[str, str]              # function name -> why the framework is not timed on it

An ``Entry`` turns the canonical inputs (``benchmarks.cases.make_inputs``) into a zero-argument
call of the framework's own function on inputs already in its own layout: everything a caller
would have in hand before calling it (a config object, a loss module, a trainer instance made
once, masks as float, ids as a numpy array, the samples in contiguous groups) is prepared in
``prepare`` and is not timed; the call itself is timed. An adapter's per-call translation is not
the framework's cost: where the framework can only be reached one token or one pair per call, or
only through a whole trainer step, it is listed in ``SKIPPED`` with the reason, not timed.

Before it is timed, each entry's output (``canonical``) is checked against refimpl's on the same
inputs, or against ``expected`` where the framework deviates at these options (``deviation``
says how, with the file:line).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Entry", "PEERS"]

#: the bundled peers, by framework
PEERS = ("trl", "verl", "openrlhf", "torchrl", "liger", "skyrl")


@dataclass(frozen=True)
class Entry:
    #: canonical kwargs (tensors + options) -> the timed call; a forward+backward measurement
    #: passes tensors that require grad and backpropagates ``output.sum()`` of the call's result
    #: (its first element when it returns a tuple), so prepare must keep the graph
    prepare: Callable[[dict], Callable[[], Any]]
    #: the call's result -> refimpl's output layout (untimed), for the check before timing
    canonical: Callable[[Any, dict], Any] = lambda out, kw: out
    #: canonical kwargs -> the output the framework should give where it deviates (None: refimpl's)
    expected: Callable[[dict], Any] | None = None
    #: how and where the framework deviates at these options (with file:line), when it does
    deviation: str = ""
    #: False where the framework computes this function without gradient (no forward+backward)
    grad: bool = True
    #: where the timed code lives in the installed framework (file:line, version)
    source: str = ""
