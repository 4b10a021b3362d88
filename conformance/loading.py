"""Loading an adapter from what the user typed: ``module:attribute``, or a short name
registered under the entry-point group ``rlconform.adapters``."""

from __future__ import annotations

import importlib
import re
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import Any

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
ENTRY_POINT_GROUP = "rlconform.adapters"


class AdapterLoadError(Exception):
    """The adapter could not be loaded (exit status 2)."""


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
