"""The ``rlconform`` command: certify, compare, list, explain.

    rlconform certify ADAPTER --out DIR [-k GLOB] [--timeout S] [--seed N] [--thorough]
                      [--device cpu|cuda] [--in-process]
    rlconform compare REPORT.json|ADAPTER ... --out DIR
    rlconform list [-k GLOB] [--kind KIND]
    rlconform explain CHECK_ID
    rlconform setup FRAMEWORK

Exit status of ``certify``: 0 when no check is ``fail`` or ``error``, 1 when one is, 2 when the
adapter could not be loaded or the arguments are wrong (docs/contract.md).
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from conformance.checks import all_checks
from conformance.loading import AdapterLoadError
from conformance.registry import KINDS, REGISTRY
from conformance.report import verdict
from conformance.runner import certify


def _cmd_certify(args) -> int:
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            print("rlconform: --device cuda, but torch sees no CUDA device here", file=sys.stderr)
            return 2
    try:
        data = certify(args.adapter, args.out, args.k, args.timeout, args.seed, args.thorough,
                       args.device, isolate=not args.in_process,
                       progress=sys.stderr.isatty() and not args.quiet)
    except AdapterLoadError as exc:
        print(f"rlconform: {exc}", file=sys.stderr)
        return 2
    for row in data["checks"]:
        if row["status"] in ("fail", "error") or (args.verbose and row["status"] != "pass"):
            print(_format_row(row, data["adapter"]))
    s = data["summary"]
    path = f"{args.out.rstrip('/')}/{data['adapter']}.json"
    print(f"{data['adapter']}: " + ", ".join(f"{s[k]} {k}" for k in s) + f" -> {verdict(data)} "
          f"({path})")
    return 0 if s["fail"] == 0 and s["error"] == 0 else 1


def _format_row(row: dict, adapter: str) -> str:
    """STYLE.md's message template."""
    chk = REGISTRY.get(row["id"])
    lines = [f"{row['status']:<5} {row['id']}   adapter={adapter} {row.get('dtype') or ''} "
             f"sample={row.get('sample')}", f"  {row['message']}"]
    if chk:
        lines.append(f"  {chk.clause}: {chk.equation}")
        lines.append(f"  Most likely: {chk.hint}")
    lines.append(f"  Reproduce: rlconform certify {adapter} -k {row['id']}")
    return "\n".join(lines)


def _cmd_list(args) -> int:
    from tabulate import tabulate
    checks = [c for c in all_checks(args.k, thorough=True) if not args.kind or c.kind == args.kind]
    print(tabulate([[c.id, c.kind, c.estimator, len(c.mutants)] for c in checks],
                   ["check", "kind", "estimator", "mutants"], tablefmt="simple"))
    print(f"\n{len(checks)} checks")
    return 0


def _cmd_explain(args) -> int:
    all_checks(thorough=True)
    chk = REGISTRY.get(args.check_id)
    if chk is None:
        close = [c for c in REGISTRY if args.check_id in c]
        print(f"rlconform: no check {args.check_id!r}" + (f"; did you mean {close[:5]}?" if close else ""),
              file=sys.stderr)
        return 2
    wrap = lambda t: textwrap.fill(t, 96, initial_indent="  ", subsequent_indent="  ")  # noqa: E731
    print(f"{chk.id}  ({chk.kind}, estimator {chk.estimator})\n")
    print(f"Equation:\n{wrap(chk.equation)}\n\nSource:\n{wrap(chk.clause)}\n")
    if chk.derivation:
        print(f"Derivation:\n{textwrap.indent(chk.derivation.strip(), '  ')}\n")
    print(f"Tolerance:\n{wrap(f'float64 {chk.tol.float64:g}, float32 {chk.tol.float32:g}: {chk.tol.reason}')}\n")
    print(f"A failure means, and how to fix it:\n{wrap(chk.hint)}\n")
    if chk.mutants:
        print(f"Broken implementations it rejects (tests/mutants.py):\n{wrap(', '.join(chk.mutants))}")
    return 0


def _cmd_compare(args) -> int:
    from conformance.compare import compare
    try:
        compare(args.inputs, args.out, seed=args.seed)
    except (AdapterLoadError, FileNotFoundError, ValueError) as exc:
        print(f"rlconform: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out.rstrip('/')}/comparison.md, comparison.json, comparison.png")
    return 0


def _cmd_setup(args) -> int:
    from conformance.install import setup
    return setup(args.framework, dry_run=args.dry_run)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlconform", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("certify", help="run every check against an adapter and write a report")
    c.add_argument("adapter", help="module:attribute, or a registered name (e.g. refimpl)")
    c.add_argument("--out", required=True, help="directory for <adapter>.json and <adapter>.md")
    c.add_argument("-k", metavar="GLOB", help="only checks whose id matches this glob")
    c.add_argument("--timeout", type=float, default=60.0, help="seconds per check (default 60)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--thorough", action="store_true", help="add the Hypothesis tier")
    c.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    c.add_argument("--in-process", action="store_true",
                   help="no worker process (no crash isolation, no timeout)")
    c.add_argument("-v", "--verbose", action="store_true", help="print every non-pass row")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_cmd_certify)
    m = sub.add_parser("compare", help="one matrix report from several certification reports")
    m.add_argument("inputs", nargs="+", help="REPORT.json files or adapter names")
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=_cmd_compare)
    ls = sub.add_parser("list", help="list the checks")
    ls.add_argument("-k", metavar="GLOB")
    ls.add_argument("--kind", choices=KINDS)
    ls.set_defaults(func=_cmd_list)
    st = sub.add_parser("setup", help="install a bundled framework into this environment")
    st.add_argument("framework", help="trl, verl, openrlhf or torchrl")
    st.add_argument("--dry-run", action="store_true", help="print the install command only")
    st.set_defaults(func=_cmd_setup)
    e = sub.add_parser("explain", help="equation, source and fix for one check")
    e.add_argument("check_id")
    e.set_defaults(func=_cmd_explain)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
