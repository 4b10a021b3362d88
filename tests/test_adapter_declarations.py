"""Every bundled adapter's declarations are data a reader can check: each shim and each known
deviation names the framework's file and line (API.md, "What an adapter may and may not do"),
each deviation key matches a check id, and each adapter is registered under its own name.
Runs without the frameworks installed: adapter modules import their framework lazily."""

import fnmatch
import importlib
import re

import pytest

from conformance.checks import all_checks
from conformance.runner import registered_adapters

FILE_LINE = re.compile(r"[\w/.-]+\.py:\d+")
FRAMEWORK_MODULES = ["trl", "verl", "openrlhf", "torchrl"]
IDS = [c.id for c in all_checks(thorough=True)]


def _adapters():
    out = []
    for ep in sorted(registered_adapters().values(), key=lambda e: e.name):
        if ep.name == "refimpl":
            continue
        module, attr = ep.value.split(":")
        out.append(pytest.param(ep.name, getattr(importlib.import_module(module), attr), id=ep.name))
    return out


def test_every_framework_has_registered_adapters():
    names = set(registered_adapters())
    for fw in FRAMEWORK_MODULES:
        assert fw in names, f"{fw} is not registered under rlconform.adapters"


@pytest.mark.parametrize("name,adapter", _adapters())
def test_every_declaration_carries_a_file_and_line(name, adapter):
    assert adapter.name == name
    assert getattr(adapter, "framework", None), f"{name} does not say which version it was written against"
    for kind in ("shims", "known_deviations"):
        for key, sentence in (getattr(adapter, kind, None) or {}).items():
            assert FILE_LINE.search(sentence), f"{name}.{kind}[{key!r}] has no file.py:LINE: {sentence}"
    for pattern in getattr(adapter, "known_deviations", None) or {}:
        assert any(fnmatch.fnmatchcase(i, pattern) for i in IDS), (
            f"{name}: known_deviations key {pattern!r} matches no check id")
