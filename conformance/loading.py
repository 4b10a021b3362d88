"""What the user typed: the adapter a spec names (docs/contract.md, "Naming an adapter") and the
``-k`` glob over check ids (``glob_error``). The adapter forms:

- ``package.module:attribute`` (a dotted path after the colon reaches nested attributes);
- ``path/to/file.py:NAME``, the object ``NAME`` in a Python file loaded from its path
  (``path/to/file.py:`` makes the file's module itself the adapter);
- ``NAME`` without a colon: a name registered under the entry-point group
  ``rlconform.adapters``, else an importable module that is itself the adapter;
- ``package.module:`` (nothing after the colon): a module that is itself the adapter.

The current working directory is importable, as it is for ``python -m`` and for pytest's
rootdir: ``load_adapter`` puts it at the front of ``sys.path`` when it is missing. The worker
process of ``rlconform certify`` loads the adapter again from the same spec (it starts in the
same directory), so every form works there too.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from types import ModuleType
from typing import Any

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
ENTRY_POINT_GROUP = "rlconform.adapters"


class AdapterLoadError(Exception):
    """The adapter could not be loaded (exit status 2). The message is one line."""


def registered_adapters() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _cwd_importable() -> None:
    """Put the current working directory at the front of ``sys.path`` when it is not on it
    (``python -m`` does this; a console script such as ``rlconform`` does not)."""
    cwd = os.getcwd()
    on_path = {os.path.abspath(p or os.curdir) for p in sys.path}
    if cwd not in on_path:
        sys.path.insert(0, cwd)


def _is_file_spec(target: str) -> bool:
    return target.endswith(".py")


def file_module_name(path: str | os.PathLike) -> str:
    """The ``sys.modules`` name of an adapter file: stable for one absolute path, so loading
    the same spec twice (the worker process does) gives the same module."""
    resolved = Path(path).resolve()
    stem = re.sub(r"\W", "_", resolved.stem)
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    return f"_rlconform_adapter_{stem}_{digest}"


def _load_file(path_text: str) -> ModuleType:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise AdapterLoadError(f"no adapter file {path_text!r} (looked in {os.getcwd()})")
    name = file_module_name(path)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    if spec is None or spec.loader is None:
        raise AdapterLoadError(f"cannot load {path_text!r} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_module(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # the module itself (or a parent package) is missing, not something it imports
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise AdapterLoadError(f"no module named {module!r} (looked on sys.path, "
                                   f"including {os.getcwd()})") from None
        raise


def _resolve(spec: str):
    if ":" in spec:
        target, _, attr = spec.rpartition(":")
        if not target:
            raise AdapterLoadError(f"adapter {spec!r}: nothing before the colon; use "
                                   "module:attribute or path/to/file.py:NAME")
        obj = _load_file(target) if _is_file_spec(target) else _import_module(target)
        if attr:
            for part in attr.split("."):
                if not hasattr(obj, part):
                    raise AdapterLoadError(f"adapter {spec!r}: {target!r} has no attribute "
                                           f"{part!r}")
                obj = getattr(obj, part)
        return obj
    eps = registered_adapters()
    if spec in eps:
        return eps[spec].load()
    if _is_file_spec(spec):
        return _load_file(spec)
    try:
        return _import_module(spec)
    except AdapterLoadError:
        known = ", ".join(sorted(eps)) or "none"
        raise AdapterLoadError(
            f"no adapter named {spec!r}: not a registered name (registered: {known}) nor an "
            "importable module; name one as module:attribute or path/to/file.py:NAME") from None


def glob_error(pattern: str | None, thorough: bool = False, option: str = "-k",
               slow: bool = False) -> str | None:
    """One line saying that ``pattern`` (a ``-k`` glob over check ids; ``option`` is how the
    user gave it) selects no check, with the close matches among the check ids and their
    estimator prefixes (``dpo_loss/*``); None when it selects at least one check (or there is
    no pattern)."""
    import difflib
    import fnmatch

    from conformance.checks import all_checks

    if not pattern or all_checks(pattern, thorough=thorough, slow=slow):
        return None
    everything = all_checks(thorough=True, slow=True)
    if not thorough and any(fnmatch.fnmatchcase(c.id, pattern) for c in everything):
        return f"{option} {pattern!r} matches only checks of the thorough tier; add --thorough"
    prefixes = sorted({f"{c.estimator}/*" for c in everything})
    ids = [c.id for c in everything if thorough or not c.thorough]
    stem = pattern.replace("*", "").replace("?", "")
    close = difflib.get_close_matches(pattern, prefixes + ids, n=5, cutoff=0.6)
    close += [c for c in difflib.get_close_matches(stem, prefixes + ids, n=5, cutoff=0.6)
              if c not in close]
    close += [p for p in prefixes if stem and stem.split("/")[0] in p and p not in close]
    hint = (f"; close: {', '.join(close[:5])}" if close else
            f"; estimators: {', '.join(prefixes)}")
    return f"{option} {pattern!r} matches no check{hint}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_adapter(spec: str):
    """The adapter ``spec`` names (see the module docstring); ``AdapterLoadError`` with one
    line saying why when it cannot be loaded."""
    _cwd_importable()
    try:
        obj = _resolve(spec)
    except AdapterLoadError:
        raise
    except Exception as exc:                                          # noqa: BLE001
        raise AdapterLoadError(f"could not load adapter {spec!r}: {type(exc).__name__}: "
                               f"{_one_line(exc)}") from exc
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:                                      # noqa: BLE001
            raise AdapterLoadError(f"could not instantiate adapter class {spec!r} without "
                                   f"arguments: {type(exc).__name__}: {_one_line(exc)}") from exc
    framework = getattr(obj, "framework", None) or {}
    if not isinstance(framework, dict):
        raise AdapterLoadError(f"adapter {spec!r}: `framework` should be a dict of package -> "
                               f"version specifier, got {type(framework).__name__}")
    for pkg, spec_ in framework.items():
        try:
            version(pkg)
        except PackageNotFoundError:
            raise AdapterLoadError(
                f"adapter {spec!r} needs {pkg}{spec_}, which is not installed here; "
                f"run `rlconform setup {pkg.split('-')[0]}` (or pip install \"{pkg}{spec_}\")") from None
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not NAME_RE.match(name):
        what = "module" if isinstance(obj, ModuleType) else "object"
        raise AdapterLoadError(f"adapter {spec!r} ({what}) needs a `name` of letters, digits, "
                               f"_ - . (got {name!r})")
    return obj
