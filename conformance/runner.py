"""Running checks against an adapter: statuses, declared deviations, and crash isolation.

``run_check`` runs one check whole (inputs made, adapter called, gradients taken, mutation
detected) and turns what happened into a report row. ``WorkerPool`` runs checks in a worker
process that loads the adapter itself from its spec: a segfault, ``os._exit`` or a hang costs
that check only (``error``), the worker is restarted, and a healthy adapter pays one process
start for the whole run. Workers are forked from a fork server that has only imported torch and
the checks (forking a process whose torch has run threads is unsafe; the server never has), so a
restart does not pay those imports again; ``spawn`` where there is no fork server. An adapter
handed over as a Python object runs in-process, without that isolation.
"""

from __future__ import annotations

import fnmatch
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
import zlib
from importlib.metadata import PackageNotFoundError, version

import torch

from conformance import Unsupported
from conformance.checks import all_checks
from conformance.checks.templates import failure_class
from conformance.context import AdapterMisbehaved, CheckFailed, Context, NotProvided
from conformance.contract import declaration_errors, defaults_errors
from conformance.loading import (  # noqa: F401
    AdapterLoadError,
    glob_error,
    load_adapter,
    registered_adapters,
)
from conformance.registry import REGISTRY, Check
from conformance.report import ReportWriter

# --- one check --------------------------------------------------------------------------------

def check_seed(seed: int, check_id: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(check_id.encode())) % (2 ** 31)


#: the adapter's declarations keyed by check-id globs (docs/contract.md, "Adapters")
GLOB_DECLARATIONS = ("known_deviations", "upstream", "qualified")


def _declared(adapter, check_id: str, what: str = "known_deviations") -> str | None:
    """The value of the first glob of declaration ``what`` that matches ``check_id``."""
    declared = getattr(adapter, what, None)
    for pattern, value in (declared.items() if isinstance(declared, dict) else ()):
        if isinstance(pattern, str) and fnmatch.fnmatchcase(check_id, pattern):
            return value
    return None


def _row(chk: Check, status: str, message: str, seconds: float, ctx: Context | None,
         failure: CheckFailed | None = None, cls: str | None = None,
         deviation: str | None = None, upstream: str | None = None,
         qualified: str | None = None) -> dict:
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
        "class": cls, "deviation": deviation, "upstream": upstream, "qualified": qualified,
    }


def _plain(x):
    if isinstance(x, (int, float, str)) or x is None:
        return x
    return str(x)


def run_check(chk: Check, adapter, seed: int = 0, device: str = "cpu") -> dict:
    """Run one check in this process and return its report row (docs/contract.md, "The JSON report")."""
    ctx = Context(chk, adapter, seed=check_seed(seed, chk.id), device=device)
    start = time.perf_counter()
    failure, cls = None, None
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
        try:
            cls = failure_class(ctx, exc)
        except Exception:                                             # noqa: BLE001
            cls = exc.cls or chk.cls            # the re-run is a diagnosis, never a new error
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
    deviation = qualified = None
    if declared is not None:
        if status == "fail":
            status, message, deviation = "xfail", f"{message} | declared: {declared}", declared
        elif status == "pass":                 # a stale declaration: no failure, no class
            status, deviation = "fail", declared
            message = f"declared deviation no longer occurs: {declared}"
    if status == "pass":
        qualified = _declared(adapter, chk.id, "qualified")
        if qualified is not None:               # a pass that cannot show the behaviour: first
            ctx.notes.insert(0, f"qualified: {qualified}")
    return _row(chk, status, message, seconds, ctx, failure,
                cls=cls if status in ("fail", "xfail") else None, deviation=deviation,
                upstream=_declared(adapter, chk.id, "upstream"), qualified=qualified)


def error_row(chk: Check, message: str, seconds: float) -> dict:
    return _row(chk, "error", message, seconds, None)


def unmatched_declarations(adapter, checks: list[Check]) -> list[str]:
    """Warnings: declarations that match no check id, capabilities outside the contract's
    vocabulary, and a framework version other than the one the adapter was written against."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    ids = [c.id for c in REGISTRY.values()] or [c.id for c in checks]
    out = [f"{what} key {pattern!r} matches no check id"
           for what in GLOB_DECLARATIONS
           for pattern in _keys(getattr(adapter, what, None))
           if not any(fnmatch.fnmatchcase(i, pattern) for i in ids)]
    out += declaration_errors(adapter)
    for pkg, spec in (getattr(adapter, "framework", None) or {}).items():
        try:
            found = version(pkg)
        except PackageNotFoundError:
            continue
        try:
            wanted = SpecifierSet(spec if spec[:1] in "=<>!~" else f"=={spec}") if spec else None
        except InvalidSpecifier:
            out.append(f"framework declares {pkg}: {spec!r}, which is not a version specifier "
                       "(e.g. '==1.2.3' or '>=0.4,<0.5')")
            continue
        if wanted is not None and found not in wanted:
            out.append(f"{pkg} {found} installed; the adapter was written against {pkg}{spec}")
    return out


def _keys(declaration) -> list[str]:
    return [k for k in declaration if isinstance(k, str)] if isinstance(declaration, dict) else []


def framework_defaults(adapter) -> tuple[dict, list[str]]:
    """The adapter's ``framework_defaults`` (called here, so in the worker when isolated) and
    warnings about it (it raised, or keys outside the vocabulary)."""
    defaults = getattr(adapter, "framework_defaults", None)
    if callable(defaults):
        try:
            defaults = defaults()
        except Exception as exc:                                      # noqa: BLE001
            return {}, [f"framework_defaults() raised {type(exc).__name__}: {exc}"]
    defaults = dict(defaults or {})
    return defaults, defaults_errors(defaults)


# --- crash isolation ------------------------------------------------------------------------------

def _worker_main(spec: str, seed: int, device: str, conn, environ: dict | None = None,
                 lifeline=None) -> None:
    # Ctrl-C goes to the whole process group: the parent handles it (both reports written,
    # exit 130) and kills this worker; the worker itself must not print a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if lifeline is not None:            # never outlive the parent, even one killed mid-check
        threading.Thread(target=_exit_when_closed, args=(lifeline,), daemon=True).start()
    if environ is not None:             # the parent's environment now, not the fork server's
        os.environ.clear()
        os.environ.update(environ)
    torch.set_num_threads(1)
    try:
        _serve(spec, seed, device, conn)
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        return                          # the parent is gone (Ctrl-C): nothing to answer, no traceback


def _exit_when_closed(lifeline) -> None:
    """The worker's watchdog: the parent holds the other end of ``lifeline`` and never writes;
    when that end closes (the parent exited or was killed, however it died) the worker exits at
    once, even while an adapter hangs in a check, so no orphan keeps the parent's pipes open."""
    try:
        lifeline.poll(None)
    except (OSError, EOFError):
        pass
    os._exit(0)


def _serve(spec: str, seed: int, device: str, conn) -> None:
    try:
        adapter = load_adapter(spec)
        all_checks(thorough=True, slow=True)
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
        if check_id == DEFAULTS:
            conn.send(("defaults", framework_defaults(adapter)))
            continue
        conn.send(("row", run_check(REGISTRY[check_id], adapter, seed, device)))


DEFAULTS = "<framework_defaults>"        # a request to the worker that is not a check id


#: what the fork server imports once: a worker forked from it starts without importing torch and
#: the checks again (a restart after a hang or a crash costs ~0.1 s instead of ~4 s)
PRELOAD = ["torch", "refimpl", "conformance.checks", "conformance.runner"]


def _worker_context():
    """Workers are forked from a fork server that has imported torch and the checks and run
    nothing (no thread pool, no CUDA context: what makes forking torch unsafe never happened
    there); spawned where there is no fork server (Windows)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


class WorkerPool:
    """One worker process, restarted when it dies or hangs."""

    def __init__(self, spec: str, seed: int = 0, device: str = "cpu", timeout: float = 60.0):
        self.spec, self.seed, self.device, self.timeout = spec, seed, device, timeout
        self.ctx = _worker_context()
        self.proc = None
        self.conn = None
        self.lifeline = None
        self.restarts = 0

    def _start(self):
        parent, child = self.ctx.Pipe()
        watched, self.lifeline = self.ctx.Pipe(duplex=False)      # the worker's watchdog end
        self.proc = self.ctx.Process(target=_worker_main, daemon=True,
                                     args=(self.spec, self.seed, self.device, child,
                                           dict(os.environ), watched))
        try:
            self.proc.start()
        except BaseException:
            self.proc = None            # interrupted while the fork server answered: not started
            self._cut_lifeline()        # (if it did start, its watchdog ends it)
            raise
        finally:
            child.close()
            watched.close()
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

    def kill(self):
        """Stop the worker now (Ctrl-C): no goodbye, no waiting for a check to end."""
        self._kill()

    def _kill(self):
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
        if self.proc is not None:
            self.proc.join(5)
        self.proc = None
        self._cut_lifeline()

    def _cut_lifeline(self):
        if self.lifeline is not None:
            self.lifeline.close()
            self.lifeline = None

    def run(self, chk: Check) -> dict:
        if self.proc is None or not self.proc.is_alive():
            if self.proc is not None:
                self.restarts += 1
            self._start()
        start = time.perf_counter()
        timeout = max(self.timeout, chk.timeout)
        self.conn.send(chk.id)
        if self.conn.poll(timeout):
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
        return error_row(chk, f"timed out after {timeout:g} s (the worker was killed and "
                              "restarted)", time.perf_counter() - start)

    def framework_defaults(self) -> tuple[dict, list[str]]:
        """The adapter's ``framework_defaults``, computed in the worker (framework code runs
        under the same isolation and timeout as a check)."""
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send(DEFAULTS)
        if self.conn.poll(self.timeout):
            try:
                kind, payload = self.conn.recv()
                return payload
            except EOFError:
                pass
        self._kill()
        return {}, [f"framework_defaults() did not answer within {self.timeout:g} s (the worker "
                    "was restarted)"]

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


# --- certification -------------------------------------------------------------------------------

def certify(spec_or_adapter, out, pattern: str | None = None, timeout: float = 60.0,
            seed: int = 0, thorough: bool = False, device: str = "cpu", isolate: bool = True,
            progress: bool = False, slow: bool = False) -> dict:
    """Certify an adapter (a spec string, run in a worker process; or an object, in-process)
    and write ``out/<name>.json`` and ``.md``. Returns the report data.

    Ctrl-C (``KeyboardInterrupt``) stops the run: both reports are written with
    ``"complete": false`` and the interrupt is raised again for the caller."""
    checks = all_checks(pattern, thorough=thorough, slow=slow)
    if not checks:                         # a typo in a CI's -k must not read as "conforms"
        raise ValueError(glob_error(pattern, thorough) or "no check selected")
    adapter = load_adapter(spec_or_adapter) if isinstance(spec_or_adapter, str) else spec_or_adapter
    pool = (WorkerPool(spec_or_adapter, seed, device, timeout)
            if isolate and isinstance(spec_or_adapter, str) else None)
    bar = None
    # the writer first: Ctrl-C while the worker imports a heavy framework still leaves reports
    writer = ReportWriter(out, adapter, seed, unmatched_declarations(adapter, checks),
                          total=len(checks))
    try:
        try:
            defaults, warnings = pool.framework_defaults() if pool else framework_defaults(adapter)
            writer.set_framework_defaults(defaults, warnings)
            if progress:
                from tqdm import tqdm
                bar = tqdm(total=len(checks), desc=f"certify {adapter.name}", unit="check",
                           leave=False)
            for chk in checks:
                row = pool.run(chk) if pool else run_check(chk, adapter, seed, device)
                if row.get("upstream") is None:        # rows the worker could not write itself
                    row["upstream"] = _declared(adapter, chk.id, "upstream")
                writer.add(row)
                if bar:
                    bar.update(1)
                    bar.set_postfix_str(chk.id[-40:])
        except KeyboardInterrupt:
            if pool:
                pool.kill()                 # a worker stuck in the adapter: no waiting for it
            writer.finish(complete=False)
            raise
        writer.finish()
    finally:
        if bar:
            bar.close()
        if pool:
            pool.close()
    return writer.data
