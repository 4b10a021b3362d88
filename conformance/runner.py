"""Running checks against an adapter: statuses, declared deviations, and crash isolation.

``run_check`` runs one check whole (inputs made, adapter called, gradients taken, mutation
detected) and turns what happened into a report row. ``WorkerPool`` runs checks in a worker
process that loads the adapter itself from its spec: a segfault, ``os._exit`` or a hang costs
that check only (``error``), the worker is restarted, and a healthy adapter pays one process
start for the whole run. Workers are started with ``spawn`` (torch's threads and ``fork`` do not
mix). An adapter handed over as a Python object runs in-process, without that isolation.
"""

from __future__ import annotations

import fnmatch
import importlib
import multiprocessing as mp
import re
import time
import traceback
import zlib
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import Any

import torch

from conformance import Unsupported
from conformance.core import (REGISTRY, AdapterMisbehaved, Check, CheckFailed, Context, NotProvided,
                              all_checks)

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
ENTRY_POINT_GROUP = "rlconform.adapters"


class AdapterLoadError(Exception):
    """The adapter could not be loaded (exit status 2)."""


# --- loading --------------------------------------------------------------------------------------

def registered_adapters() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_adapter(spec: str):
    """``module:attribute`` or a short name registered under ``rlconform.adapters``."""
    try:
        if ":" in spec:
            module, attr = spec.split(":", 1)
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        else:
            eps = registered_adapters()
            if spec not in eps:
                known = ", ".join(sorted(eps)) or "none"
                raise AdapterLoadError(f"no adapter named {spec!r} (registered: {known}); "
                                       "name one as module:attribute")
            obj = eps[spec].load()
    except AdapterLoadError:
        raise
    except Exception as exc:                                          # noqa: BLE001
        raise AdapterLoadError(f"could not load adapter {spec!r}: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, type):
        obj = obj()
    for pkg, spec_ in (getattr(obj, "framework", None) or {}).items():
        try:
            version(pkg)
        except PackageNotFoundError:
            raise AdapterLoadError(
                f"adapter {spec!r} needs {pkg}{spec_}, which is not installed here; "
                f"run `rlconform setup {pkg.split('-')[0]}` (or pip install \"{pkg}{spec_}\")") from None
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise AdapterLoadError(f"adapter {spec!r} needs a `name` of letters, digits, _ - . "
                               f"(got {name!r})")
    return obj


# --- one check --------------------------------------------------------------------------------

def check_seed(seed: int, check_id: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(check_id.encode())) % (2 ** 31)


def _declared(adapter, check_id: str) -> str | None:
    for pattern, reason in (getattr(adapter, "known_deviations", None) or {}).items():
        if fnmatch.fnmatchcase(check_id, pattern):
            return reason
    return None


def _row(chk: Check, status: str, message: str, seconds: float, ctx: Context | None,
         failure: CheckFailed | None = None) -> dict:
    return {
        "id": chk.id, "estimator": chk.estimator, "kind": chk.kind, "status": status,
        "message": message, "seconds": round(seconds, 4), "clause": chk.clause,
        "dtype": ",".join(sorted(ctx.dtypes_seen)) if ctx and ctx.dtypes_seen else None,
        "sample": (failure.sample if failure else (ctx.sample if ctx and status == "error" else None)),
        "expected": _plain(failure.expected) if failure else None,
        "actual": _plain(failure.actual) if failure else None,
        "abs_err": failure.abs_err if failure else None,
        "rel_err": failure.rel_err if failure else (ctx.max_rel_err if ctx and ctx.max_rel_err else None),
        "note": "; ".join(ctx.notes) if ctx and ctx.notes else None,
    }


def _plain(x):
    if isinstance(x, (int, float, str)) or x is None:
        return x
    return str(x)


def run_check(chk: Check, adapter, seed: int = 0, device: str = "cpu") -> dict:
    """Run one check in this process and return its report row (API.md schema)."""
    ctx = Context(chk, adapter, seed=check_seed(seed, chk.id), device=device)
    start = time.perf_counter()
    failure = None
    try:
        torch.manual_seed(ctx.seed)
        chk.body(ctx)
        status, message = "pass", ""
        if ctx.unsupported and ctx.ran == 0:
            status, message = "skip", "unsupported: " + "; ".join(dict.fromkeys(
                u.split(": ", 1)[-1] for u in ctx.unsupported))
        elif ctx.unsupported:
            ctx.note(f"{len(ctx.unsupported)} variant(s) unsupported, e.g. {ctx.unsupported[0]}")
    except NotProvided as exc:
        status, message = "skip", str(exc)
    except Unsupported as exc:
        status, message = "skip", f"unsupported: {exc}"
    except CheckFailed as exc:
        status, message, failure = "fail", exc.message, exc
    except AdapterMisbehaved as exc:
        status, message = "error", str(exc)
    except Exception as exc:                                          # noqa: BLE001
        where = traceback.extract_tb(exc.__traceback__)[-1]
        status = "error"
        message = (f"{type(exc).__name__}: {exc} (at {where.filename.split('/')[-1]}:{where.lineno}, "
                   f"sample {ctx.sample})")
    seconds = time.perf_counter() - start
    if chk.kind == "exact" and status == "pass" and not ctx.notes:
        ctx.note(f"exact to max rel err {ctx.max_rel_err:.1e}")
    declared = _declared(adapter, chk.id)
    if declared is not None:
        if status == "fail":
            status, message = "xfail", f"{message} | declared: {declared}"
        elif status == "pass":
            status, message = "fail", f"declared deviation no longer occurs: {declared}"
    if status in ("fail", "xfail") and failure is None:
        failure = None
    return _row(chk, status, message, seconds, ctx, failure)


def error_row(chk: Check, message: str, seconds: float) -> dict:
    return _row(chk, "error", message, seconds, None)


def unmatched_declarations(adapter, checks: list[Check]) -> list[str]:
    """Warnings: declarations that match no check id, and a framework version other than the
    one the adapter was written against."""
    from packaging.specifiers import SpecifierSet

    ids = [c.id for c in REGISTRY.values()] or [c.id for c in checks]
    out = [f"known_deviations key {pattern!r} matches no check id"
           for pattern in (getattr(adapter, "known_deviations", None) or {})
           if not any(fnmatch.fnmatchcase(i, pattern) for i in ids)]
    for pkg, spec in (getattr(adapter, "framework", None) or {}).items():
        try:
            found = version(pkg)
        except PackageNotFoundError:
            continue
        if spec and found not in SpecifierSet(spec if spec[0] in "=<>!~" else f"=={spec}"):
            out.append(f"{pkg} {found} installed; the adapter was written against {pkg}{spec}")
    return out


# --- crash isolation ------------------------------------------------------------------------------

def _worker_main(spec: str, seed: int, device: str, conn) -> None:
    torch.set_num_threads(1)
    try:
        adapter = load_adapter(spec)
        all_checks(thorough=True)
    except Exception as exc:                                          # noqa: BLE001
        conn.send(("load-error", f"{exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            check_id = conn.recv()
        except EOFError:
            return
        if check_id is None:
            return
        conn.send(("row", run_check(REGISTRY[check_id], adapter, seed, device)))


class WorkerPool:
    """One worker process, restarted when it dies or hangs."""

    def __init__(self, spec: str, seed: int = 0, device: str = "cpu", timeout: float = 60.0):
        self.spec, self.seed, self.device, self.timeout = spec, seed, device, timeout
        self.ctx = mp.get_context("spawn")
        self.proc = None
        self.conn = None
        self.restarts = 0

    def _start(self):
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker_main,
                                     args=(self.spec, self.seed, self.device, child), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent
        if not self.conn.poll(max(self.timeout, 120.0)):
            self._kill()
            raise AdapterLoadError(f"worker for {self.spec!r} did not start")
        try:
            kind, payload = self.conn.recv()
        except EOFError:
            self._kill()
            raise AdapterLoadError(f"worker for {self.spec!r} died while loading the adapter")
        if kind == "load-error":
            self._kill()
            raise AdapterLoadError(payload)

    def _kill(self):
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
        if self.proc is not None:
            self.proc.join(5)
        self.proc = None

    def run(self, chk: Check) -> dict:
        if self.proc is None or not self.proc.is_alive():
            if self.proc is not None:
                self.restarts += 1
            self._start()
        start = time.perf_counter()
        self.conn.send(chk.id)
        if self.conn.poll(self.timeout):
            try:
                kind, row = self.conn.recv()
                return row
            except EOFError:
                pass
            code = self._exitcode()
            return error_row(chk, f"the adapter killed its process (exit code {code}) during "
                                  "this check; the worker was restarted", time.perf_counter() - start)
        code = self._exitcode(wait=0.0)
        if code is not None:
            return error_row(chk, f"the adapter killed its process (exit code {code}) during "
                                  "this check; the worker was restarted", time.perf_counter() - start)
        self._kill()
        self.restarts += 1
        return error_row(chk, f"timed out after {self.timeout:g} s (the worker was killed and "
                              "restarted)", time.perf_counter() - start)

    def _exitcode(self, wait: float = 5.0):
        if self.proc is None:
            return None
        self.proc.join(wait)
        code = self.proc.exitcode
        if code is not None:
            self.proc = None
            self.restarts += 1
        return code

    def close(self):
        if self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(None)
                self.proc.join(5)
            except (BrokenPipeError, OSError):
                pass
        self._kill()
