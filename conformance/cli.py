"""The ``rlconform`` command: certify, compare, list, explain, setup, repro, train, sheet.

    rlconform certify ADAPTER --out DIR [-k GLOB] [--timeout S] [--seed N] [--thorough] [--slow]
                      [--device cpu|cuda] [--in-process] [-v] [-q]
    rlconform compare REPORT.json|ADAPTER ... --out DIR [--seed N]
    rlconform list [-k GLOB] [--kind KIND]
    rlconform explain CHECK_ID
    rlconform setup FRAMEWORK [--dry-run]
    rlconform repro ADAPTER CHECK_ID --out FILE [--seed N]
    rlconform train ALGO --out DIR [--task T] [--steps N] [--seed S] [--model PATH]
                    [--device D] [--set FIELD=VALUE ...] [--preset NAME] [--tensorboard] [-q]
    rlconform sheet --out FILE [--no-figures] [--check] [-v]
    rlconform --version

Exit status of ``certify`` (docs/contract.md, "Certification and statuses"): 0 when no check is
``fail`` or ``error``, 1 when one is, 2 when the adapter could not be loaded or the arguments are
wrong (a ``-k`` glob that matches no check, an ``--out`` that cannot be written), 130 when
interrupted with Ctrl-C (both reports are still written, marked ``"complete": false``).
Every problem the user can fix is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import os
import shlex
import signal
import sys
import textwrap
import time
from pathlib import Path

from refimpl import train as _train

from conformance.install import FRAMEWORKS, GROUPS
from conformance.loading import AdapterLoadError, glob_error, load_adapter
from conformance.registry import CONTRACT, KINDS, REGISTRY
from conformance.report import (
    ReportWriteError,
    advice,
    check_writable,
    verdict,
)

DEFAULT_TIMEOUT = 60.0


def _error(message: str) -> int:
    print(f"rlconform: {message}", file=sys.stderr)
    return 2


def version() -> str:
    """The installed distribution's version; refimpl's when rlconform is not installed (a bare
    checkout on ``PYTHONPATH``)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version
    try:
        return dist_version("rlconform")
    except PackageNotFoundError:
        import refimpl
        return refimpl.__version__


# --- certify ----------------------------------------------------------------------------------------

def _cmd_certify(args) -> int:
    from conformance.checks import all_checks

    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            return _error("--device cuda, but torch sees no CUDA device here")
    problem = glob_error(args.k, thorough=args.thorough, slow=args.slow)
    if problem:
        return _error(problem)
    try:
        adapter = load_adapter(args.adapter)
    except AdapterLoadError as exc:
        return _error(str(exc))
    try:
        check_writable(args.out)                    # before any check runs
    except ReportWriteError as exc:
        return _error(str(exc))
    from conformance.runner import certify
    if args.slow and not os.environ.get("RLCONFORM_RUNS_DIR"):
        os.environ["RLCONFORM_RUNS_DIR"] = str(Path(args.out) / "runs")   # curves of the runs
    started = time.time()
    try:
        data = certify(args.adapter, args.out, args.k, args.timeout, args.seed, args.thorough,
                       args.device, isolate=not args.in_process,
                       progress=sys.stderr.isatty() and not args.quiet, slow=args.slow)
    except (AdapterLoadError, ReportWriteError) as exc:
        return _error(str(exc))
    except KeyboardInterrupt:
        return _interrupted(args, adapter, len(all_checks(args.k, thorough=args.thorough,
                                                          slow=args.slow)),
                            started)
    for row in data["checks"]:
        if row["status"] in ("fail", "error") or (args.verbose and row["status"] != "pass"):
            print(_format_row(row, data["adapter"], args))
    s = data["summary"]
    path = Path(args.out) / f"{data['adapter']}.json"
    print(f"{data['adapter']}: " + ", ".join(f"{s[k]} {k}" for k in s) + f" -> {verdict(data)} "
          f"({path})")
    return 0 if s["fail"] == 0 and s["error"] == 0 else 1


def _interrupted(args, adapter, total: int, started: float) -> int:
    """Ctrl-C: the runner has written both reports with ``"complete": false``; say where, in
    one line, and exit 130. A second Ctrl-C meanwhile is ignored (no traceback)."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:                              # not the main thread
        return _report_interrupted(args, adapter, total, started)
    try:
        return _report_interrupted(args, adapter, total, started)
    finally:
        signal.signal(signal.SIGINT, previous)


def _report_interrupted(args, adapter, total: int, started: float) -> int:
    json_path = Path(args.out) / f"{adapter.name}.json"
    md_path = json_path.with_suffix(".md")
    if not json_path.is_file() or json_path.stat().st_mtime < started - 1:   # none, or an old one
        print("rlconform: interrupted before any report was written", file=sys.stderr)
        return 130
    ran = "?"
    try:                      # the runner wrote both, the Markdown with "N of M checks ran"
        ran = len(json.loads(json_path.read_text())["checks"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    print(f"rlconform: interrupted; partial reports in {json_path} and {md_path} "
          f"({ran} of {total} checks ran)", file=sys.stderr)
    return 130


def reproduce_command(row: dict, args) -> str:
    """The command that runs this one check again, as the user can paste it (into a
    ``reproduce`` folder under ``--out``, so the full report is not overwritten)."""
    chk = REGISTRY.get(row["id"])
    out = str(Path(args.out) / "reproduce")
    argv = ["rlconform", "certify", args.adapter, "--out", out, "-k", row["id"]]
    if getattr(args, "seed", 0):
        argv += ["--seed", str(args.seed)]
    if getattr(args, "timeout", DEFAULT_TIMEOUT) != DEFAULT_TIMEOUT:
        argv += ["--timeout", f"{args.timeout:g}"]
    if getattr(args, "device", "cpu") != "cpu":
        argv += ["--device", args.device]
    if chk is not None and chk.thorough:
        argv.append("--thorough")
    return " ".join(shlex.quote(a) for a in argv)


def _format_row(row: dict, adapter: str, args) -> str:
    """One non-pass row on the command line: what happened, the clause and equation, what the
    row means (a fail's hint, an xfail's declaration, a stale declaration, the kind of error),
    and the command that reproduces it."""
    chk = REGISTRY.get(row["id"])
    lines = [f"{row['status']:<5} {row['id']}   adapter={adapter} {row.get('dtype') or ''} "
             f"sample={row.get('sample')}", f"  {row['message']}"]
    if chk:
        lines.append(f"  {chk.clause}: {chk.equation}")
    said = advice(row, chk)
    if said:
        lines.append(f"  {said}")
    lines.append(f"  Reproduce: {reproduce_command(row, args)}")
    return "\n".join(lines)


# --- list, explain --------------------------------------------------------------------------------

def _cmd_list(args) -> int:
    from tabulate import tabulate

    from conformance.checks import all_checks

    problem = glob_error(args.k, thorough=True)
    if problem:
        return _error(problem)
    checks = [c for c in all_checks(args.k, thorough=True) if not args.kind or c.kind == args.kind]
    print(tabulate([[c.id, c.kind, c.estimator, len(c.mutants)] for c in checks],
                   ["check", "kind", "estimator", "mutants"], tablefmt="simple"))
    print(f"\n{len(checks)} checks")
    return 0


def _relative(path: str) -> str:
    """``conformance/...`` from an absolute path (a checkout or an installed package)."""
    parts = path.replace("\\", "/").split("/")
    if "conformance" in parts:
        return "/".join(parts[len(parts) - 1 - parts[::-1].index("conformance"):])
    return path


def mutant_origin(name: str) -> tuple[str, str]:
    """(what the mutant breaks, the file it is defined in) for a mutant a check names: one of
    the concept modules under ``conformance/checks/``, or ``templates.py`` for a generic
    ``<function>~<bug>``."""
    from conformance.checks.templates import get
    try:
        mt = get(name)
    except KeyError:
        return "", "?"
    try:
        where = _relative(inspect.getsourcefile(mt.fn) or "")
    except TypeError:
        where = "?"
    return mt.bug, where


def _cmd_explain(args) -> int:
    from conformance import contract_doc
    from conformance.checks import all_checks

    all_checks(thorough=True)
    chk = REGISTRY.get(args.check_id)
    if chk is None:
        close = difflib.get_close_matches(args.check_id, list(REGISTRY), n=5, cutoff=0.6)
        close += [c for c in REGISTRY if args.check_id in c and c not in close][: 5 - len(close)]
        return _error(f"no check {args.check_id!r}" + (f"; close: {', '.join(close)}" if close
                                                       else "; see `rlconform list`"))
    wrap = lambda t: textwrap.fill(t, 96, initial_indent="  ", subsequent_indent="  ")  # noqa: E731
    print(f"{chk.id}  ({chk.kind}, estimator {chk.estimator})\n")
    print(f"Equation:\n{wrap(chk.equation)}\n")
    try:
        quoted = contract_doc.quote(chk.section, chk.estimator)
    except KeyError as exc:
        quoted = f"(not found: {exc.args[0]})"
    print(f"Contract ({CONTRACT}#{chk.section}):\n{textwrap.indent(quoted.rstrip(), '  ')}\n")
    print(f"Source:\n{wrap(chk.clause)}\n")
    if chk.derivation:
        print(f"Derivation:\n{textwrap.indent(chk.derivation.strip(), '  ')}\n")
    print(f"Tolerance:\n{wrap(f'float64 {chk.tol.float64:g}, float32 {chk.tol.float32:g}: {chk.tol.reason}')}\n")
    print(f"A failure means, and how to fix it:\n{wrap(chk.hint)}\n")
    if chk.file:
        print(f"Defined in:\n  {chk.file}:{chk.line}\n")
    if chk.mutants:
        print("Broken implementations it rejects:")
        for name in chk.mutants:
            bug, where = mutant_origin(name)
            print(textwrap.fill(f"- {name} (defined in {where})" + (f": {bug}" if bug else ""),
                                96, initial_indent="  ", subsequent_indent="    "))
    return 0


# --- compare, setup --------------------------------------------------------------------------------

def _cmd_compare(args) -> int:
    from conformance.compare import compare
    try:
        compare(args.inputs, args.out, seed=args.seed)
    except (AdapterLoadError, OSError, ValueError) as exc:
        return _error(" ".join(str(exc).split()))
    print(f"wrote {Path(args.out) / 'comparison.md'}, comparison.json, comparison.png")
    return 0


def _cmd_repro(args) -> int:
    """A standalone script that shows one deviation on the framework's own function
    (conformance/repro.py): exit 0 when written, 1 when the adapter agrees with refimpl on every
    call of the check (nothing to reproduce), 2 for a usage error."""
    from conformance import repro
    problem = repro.check_writable(args.out)
    if problem:
        return _error(problem)
    try:
        finding = repro.write_repro(args.adapter, args.check_id, args.out, args.seed)
    except repro.NoDifference as exc:
        print(f"rlconform: {exc}", file=sys.stderr)
        return 1
    except (AdapterLoadError, repro.ReproError) as exc:
        return _error(" ".join(str(exc).split()))
    except OSError as exc:
        return _error(f"--out {args.out!r} cannot be written: {exc.strerror or exc}")
    what = "value and gradient" if finding.value_excess and finding.gradient_excess else (
        "gradient" if finding.gradient_excess else "value")
    print(f"wrote {args.out} ({args.check_id} on {args.adapter}: the {what} differs on sample "
          f"{finding.call.sample}); run it with python {shlex.quote(str(args.out))}")
    return 0


def _cmd_setup(args) -> int:
    from conformance.install import setup
    return setup(args.framework, dry_run=args.dry_run)


# --- train ------------------------------------------------------------------------------------------

# the loops' and presets' names, from refimpl (importing refimpl.train pulls in neither
# transformers nor matplotlib: the loops themselves load when a run starts)
TRAIN_ALGORITHMS = _train.ALGORITHMS
TRAIN_PRESETS = tuple(_train.PRESETS)


def _cmd_train(args) -> int:
    """Run one of refimpl's training loops; every mistake in the arguments is one line, exit 2."""
    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            return _error(f"--set expects FIELD=VALUE, got {item!r}")
        overrides[key] = value
    if args.steps is not None and args.steps < 1:
        return _error(f"--steps {args.steps}: must be at least 1")
    from refimpl import train
    from refimpl.tasks import TASKS
    from refimpl.train.common import apply_overrides
    if args.task is not None and args.task not in TASKS:
        return _error(f"--task {args.task}: not a task (one of {', '.join(TASKS)})")
    fields = {k: v for k, v in (("task", args.task), ("steps", args.steps), ("model", args.model),
                                ("tensorboard", args.tensorboard or None)) if v is not None}
    try:
        config = train.config_for(args.algorithm, args.preset, seed=args.seed, device=args.device,
                                  **fields)
        config = apply_overrides(config, overrides)
        train.validate(config)
    except ValueError as exc:
        return _error(str(exc))
    if getattr(config, "tensorboard", False):
        import importlib.util
        if importlib.util.find_spec("tensorboard") is None:
            return _error("--tensorboard needs the tensorboard package (pip install tensorboard)")
    try:
        check_writable(Path(args.out))
    except ReportWriteError as exc:
        return _error(str(exc))
    rows = train.run(config, args.out, progress=False if args.quiet else None)
    last = {k: v for k, v in rows[-1].items() if isinstance(v, float)}
    evals = [r["eval_accuracy"] for r in rows if isinstance(r.get("eval_accuracy"), float)]
    summary = f"eval_accuracy {evals[0]:.3f} -> {evals[-1]:.3f}, " if len(evals) > 1 else ""
    print(f"{args.algorithm}: {len(rows) - 1} steps, {summary}{last.get('time_s', 0):.0f} s; "
          f"{args.out}/metrics.jsonl, {args.out}/curves.png, {args.out}/model")
    return 0


# --- sheet ---------------------------------------------------------------------------------------

def _cmd_sheet(args) -> int:
    """Generate the executable reference sheet; exit 1 when a computed claim disagrees with its
    expectation (the document is still written, the failure marked in it) or, with ``--check``,
    when the file at ``--out`` differs from what would be written."""
    from conformance import sheet as _sheet
    from conformance.sheet.common import ROOT

    if not (ROOT / "reports" / "training").is_dir():
        return _error(f"sheet reads the committed runs and reports of a checkout of the "
                      f"repository, and {ROOT / 'reports'} has none: run it in a clone")
    out = Path(args.out)
    if out.is_dir():
        return _error(f"--out {out}: a directory; give the Markdown file to write")
    if args.check and not out.is_file():
        return _error(f"--check: {out} does not exist (generate it first without --check)")
    if not args.check:
        try:
            check_writable(out.parent)
        except ReportWriteError as exc:
            return _error(str(exc))
    result = _sheet.generate()
    for claim in result.claims:
        if not claim.ok:
            print(f"FAILED [{claim.section}] {claim.text}: {claim.detail}", file=sys.stderr)
        elif args.verbose:
            print(f"ok     [{claim.section}] {claim.text}: {claim.detail}")
    held = len(result.claims) - len(result.failures)
    print(f"{held} of {len(result.claims)} computed claims hold")
    if args.check:
        if out.read_text() != result.text:
            diff = difflib.unified_diff(out.read_text().splitlines(), result.text.splitlines(),
                                        str(out), "generated", lineterm="", n=1)
            print("\n".join(list(diff)[:60]), file=sys.stderr)
            print(f"rlconform: {out} is out of date: run `rlconform sheet --out {out}`",
                  file=sys.stderr)
            return 1
        print(f"{out} is up to date")
    else:
        written = _sheet.write(result, out, figures=not args.no_figures)
        print("wrote " + ", ".join(str(p) for p in written))
    return 1 if result.failures else 0


def _frameworks_help() -> str:
    how = {name: ("pip install " + " ".join(what)) if kind == "pip"
           else f"scripted minimal install, {what}" for name, (kind, what) in FRAMEWORKS.items()}
    how.update({name: "every one of " + ", ".join(members) + ", into one environment"
                for name, members in GROUPS.items()})
    return "one of: " + "; ".join(f"{name} ({h})" for name, h in how.items())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlconform", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"rlconform {version()}",
                   help="print rlconform's version and exit")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("certify", help="run every check against an adapter and write a report")
    c.add_argument("adapter", help="a registered name (e.g. refimpl), module:attribute, "
                                   "path/to/file.py:NAME, or module: (a module that is the adapter)")
    c.add_argument("--out", required=True, help="directory for <adapter>.json and <adapter>.md "
                                                "(created if missing)")
    c.add_argument("-k", metavar="GLOB", help="only checks whose id matches this glob "
                                              "(e.g. 'ppo_clip_loss/*')")
    c.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="seconds per check before it is an error (default 60)")
    c.add_argument("--seed", type=int, default=0, help="seed the inputs are drawn with (default 0)")
    c.add_argument("--thorough", action="store_true", help="add the Hypothesis tier")
    c.add_argument("--slow", action="store_true",
                   help="add the training runs (train_run: minutes per algorithm)")
    c.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="device every input is moved to at the adapter call (default cpu)")
    c.add_argument("--in-process", action="store_true",
                   help="no worker process (no crash isolation, no timeout)")
    c.add_argument("-v", "--verbose", action="store_true", help="print every non-pass row")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_cmd_certify)
    m = sub.add_parser("compare", help="one matrix report from several certification reports")
    m.add_argument("inputs", nargs="+", help="REPORT.json files or adapter names (certified "
                                             "in-process first)")
    m.add_argument("--out", required=True, help="directory for comparison.md, comparison.json "
                                                "and comparison.png")
    m.add_argument("--seed", type=int, default=0,
                   help="seed for the adapters certified here, not for reports (default 0)")
    m.set_defaults(func=_cmd_compare)
    ls = sub.add_parser("list", help="list the checks")
    ls.add_argument("-k", metavar="GLOB", help="only checks whose id matches this glob")
    ls.add_argument("--kind", choices=KINDS, help="only checks of this kind")
    ls.set_defaults(func=_cmd_list)
    st = sub.add_parser("setup", help="install a bundled framework into this environment")
    st.add_argument("framework", choices=[*FRAMEWORKS, *GROUPS], metavar="FRAMEWORK",
                    help=_frameworks_help())
    st.add_argument("--dry-run", action="store_true", help="print the install command only")
    st.set_defaults(func=_cmd_setup)
    r = sub.add_parser("repro", help="write a standalone script that shows one deviation on the "
                                     "framework's own function (for its maintainers)")
    r.add_argument("adapter", metavar="ADAPTER", help="the adapter, named as for certify")
    r.add_argument("check_id", metavar="CHECK_ID", help="a check id, as `rlconform list` prints it")
    r.add_argument("--out", required=True, metavar="FILE", help="the script file to write")
    r.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed the inputs are drawn with (default 0, as certify's)")
    r.set_defaults(func=_cmd_repro)
    t = sub.add_parser("train", help="run one of refimpl's reference training loops on a tiny "
                                     "causal LM (metrics.jsonl, curves.png, the model)")
    t.add_argument("algorithm", choices=TRAIN_ALGORITHMS, metavar="ALGO",
                   help="one of: " + ", ".join(TRAIN_ALGORITHMS))
    t.add_argument("--out", required=True, metavar="DIR", help="directory for the run")
    t.add_argument("--task", metavar="T", help="reverse, addition, sort or decisive "
                                               "(default: the loop's)")
    t.add_argument("--steps", type=int, metavar="N", help="optimisation steps (default: the loop's)")
    t.add_argument("--seed", type=int, default=0, metavar="S", help="seed (default 0)")
    t.add_argument("--model", metavar="PATH", help="a local transformers causal LM to start from "
                                                   "(default: the task's SFT warm-up)")
    t.add_argument("--device", default="cpu", metavar="D", help="cpu (default) or cuda")
    t.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="set any field of the loop's config dataclass (repeatable)")
    t.add_argument("--preset", choices=TRAIN_PRESETS, metavar="NAME",
                   help="a run built to make a red flag fire: " + ", ".join(TRAIN_PRESETS))
    t.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)
    sh = sub.add_parser("sheet", help="generate the reference sheet of the field with every "
                        "computable claim computed and checked (docs/sheet.md)")
    sh.add_argument("--out", required=True, metavar="FILE",
                    help="the Markdown file to write (figures go to sheet/ beside it)")
    sh.add_argument("--no-figures", action="store_true", help="write the text only")
    sh.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if FILE differs from what would be written")
    sh.add_argument("-v", "--verbose", action="store_true",
                    help="print every claim with its numbers (residual, value, expectation)")
    sh.set_defaults(func=_cmd_sheet)

    e = sub.add_parser("explain", help="equation, contract section, source and fix for one check")
    e.add_argument("check_id", help="a check id, as `rlconform list` prints it")
    e.set_defaults(func=_cmd_explain)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:                         # `rlconform list | head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:                       # outside a certification run
        print("rlconform: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
