"""Every bundled adapter's declarations are data a reader can check: each shim and each known
deviation names the framework's file and line (docs/contract.md, "What an adapter may and may
not do"), each deviation key matches a check id, each variant declares the options it honours
as ``capabilities`` (never as check ids), its ``framework_defaults`` keys come from the
contract's vocabulary, and its pinned version comes from ``conformance/adapters/pins.py``.
Runs without the frameworks installed: adapter modules import their framework lazily, and
nothing here calls a framework."""

import ast
import fnmatch
import importlib
import re
import tomllib
from pathlib import Path

import pytest
import torch

import refimpl
from conformance import Unsupported
from conformance.adapters import pins, support
from conformance.checks import all_checks
from conformance.contract import ALGORITHMS, DEFAULTS_KEYS, KL_KINDS, declaration_errors
from conformance.runner import registered_adapters

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = ROOT / "conformance" / "adapters"
FILE_LINE = re.compile(r"[\w/.-]+\.py:\d+")
FRAMEWORK_MODULES = ["trl", "verl", "openrlhf", "torchrl", "liger", "skyrl"]
IDS = [c.id for c in all_checks(thorough=True)]
MODULES = {fw: ADAPTERS / f"{fw}.py" for fw in FRAMEWORK_MODULES}


def _adapters():
    out = []
    for ep in sorted(registered_adapters().values(), key=lambda e: e.name):
        if ep.name == "refimpl":
            continue
        module, attr = ep.value.split(":")
        out.append(pytest.param(ep.name, getattr(importlib.import_module(module), attr), id=ep.name))
    return out


def _framework_of(name: str) -> str:
    return name.split("-", 1)[0]


def test_every_framework_has_registered_adapters():
    names = set(registered_adapters())
    for fw in FRAMEWORK_MODULES:
        assert fw in names, f"{fw} is not registered under rlconform.adapters"


@pytest.mark.parametrize("name,adapter", _adapters())
def test_every_declaration_carries_a_file_and_line(name, adapter):
    assert adapter.name == name
    assert getattr(adapter, "framework", None), f"{name} does not say which version it was written against"
    label = pins.label(_framework_of(name))
    for kind in ("shims", "known_deviations", "qualified"):
        for key, sentence in (getattr(adapter, kind, None) or {}).items():
            assert FILE_LINE.search(sentence), f"{name}.{kind}[{key!r}] has no file.py:LINE: {sentence}"
            assert label in sentence, f"{name}.{kind}[{key!r}] is not pinned to {label}: {sentence}"
    for kind in ("known_deviations", "qualified", "upstream"):
        for pattern in getattr(adapter, kind, None) or {}:
            assert any(fnmatch.fnmatchcase(i, pattern) for i in IDS), (
                f"{name}: {kind} key {pattern!r} matches no check id")


ISSUE_OR_PR = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+/(issues|pull)/\d+")


@pytest.mark.parametrize("name,adapter", _adapters())
def test_upstream_links_are_issues_or_pull_requests_of_a_declared_deviation(name, adapter):
    """``upstream`` names the framework's issue or pull request that tracks a declared deviation:
    each glob is also a known_deviations key, each value a GitHub issue or PR address."""
    declared = getattr(adapter, "known_deviations", None) or {}
    for pattern, url in (getattr(adapter, "upstream", None) or {}).items():
        assert pattern in declared, f"{name}: upstream[{pattern!r}] tracks no declared deviation"
        assert ISSUE_OR_PR.fullmatch(url), f"{name}: upstream[{pattern!r}] = {url!r} is no issue/PR"


@pytest.mark.parametrize("name,adapter", _adapters())
def test_a_qualified_pass_is_not_also_a_deviation(name, adapter):
    """A qualified check is one that passes (only because the input hides the framework's
    behaviour); a check declared to deviate does not pass, so no id is both."""
    qualified = getattr(adapter, "qualified", None) or {}
    declared = getattr(adapter, "known_deviations", None) or {}
    both = [i for i in IDS if any(fnmatch.fnmatchcase(i, q) for q in qualified)
            and any(fnmatch.fnmatchcase(i, d) for d in declared)]
    assert not both, f"{name}: qualified and declared deviating at once: {both}"


OUTPUT_CAST = re.compile(r"(\)|\])\.(to\(\w+\.dtype\)|double\(\)|type_as\()|\b_cast\(")


@pytest.mark.parametrize("fw", FRAMEWORK_MODULES)
def test_no_adapter_casts_a_result_back_to_the_input_dtype(fw):
    """Outputs come back uncast (docs/contract.md, "What an adapter may and may not do"): no
    call result is cast to another tensor's dtype (``f(...).to(x.dtype)``, ``[...].double()``,
    ``type_as``, a ``_cast`` helper). Casting an input by name (``mask.to(like.dtype)``) stays."""
    lines = MODULES[fw].read_text().splitlines()
    bad = [f"{MODULES[fw].name}:{i}: {line.strip()}" for i, line in enumerate(lines, 1)
           if OUTPUT_CAST.search(line) and not line.lstrip().startswith("#")]
    assert not bad, "outputs cast back:\n" + "\n".join(bad)


def test_the_output_cast_scan_sees_a_cast():
    assert OUTPUT_CAST.search("    return support.restore(out, order).to(scores.dtype)")
    assert OUTPUT_CAST.search("        return _cast(kl, logp)")
    assert OUTPUT_CAST.search("    return out[:, 0].double()")
    assert not OUTPUT_CAST.search("    return mask.to(like.dtype)")


# --- capabilities ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,adapter", _adapters())
def test_every_variant_declares_capabilities_in_the_contracts_vocabulary(name, adapter):
    caps = getattr(adapter, "capabilities", None)
    assert isinstance(caps, dict), f"{name} declares no capabilities (a dict, possibly empty)"
    assert declaration_errors(adapter) == []
    for key in caps:
        function = key.rpartition(".")[0]
        if function:
            assert callable(getattr(refimpl, function, None)) or function in ALGORITHMS, (
                f"{name}: capabilities key {key!r} narrows {function!r}, neither a canonical "
                "function nor an algorithm of train_step")


def _check_id(value: str) -> bool:
    if value in IDS_SET:
        return True
    return "/" in value and any(c in value for c in "*?[") and bool(fnmatch.filter(IDS, value))


IDS_SET = set(IDS)
DECLARATION_NAME = re.compile(r"deviations|upstream|qualified", re.I)


def _target_names(node) -> list[str]:
    targets = (node.targets if isinstance(node, ast.Assign) else [node.target])
    out = []
    for t in targets:
        while isinstance(t, (ast.Subscript, ast.Attribute)) and not isinstance(t, ast.Attribute):
            t = t.value
        if isinstance(t, ast.Attribute):
            out.append(t.attr)
        elif isinstance(t, ast.Name):
            out.append(t.id)
        elif isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name):
            out.append(t.value.id)
    return out


def _check_ids_outside_declarations(path: Path) -> list[str]:
    """String literals naming a check id (or a glob of check ids) that are not part of a
    ``known_deviations``/``upstream``/``qualified`` declaration (an assignment to a name
    containing "deviations", "upstream" or "qualified")."""
    tree = ast.parse(path.read_text())
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    bad = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str) and _check_id(node.value)):
            continue
        up, allowed = node, False
        while up in parents and not allowed:
            up = parents[up]
            if isinstance(up, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                allowed = any(DECLARATION_NAME.search(n) for n in _target_names(up))
            elif isinstance(up, ast.keyword):
                allowed = bool(up.arg and DECLARATION_NAME.search(up.arg))
        if not allowed:
            bad.append(f"{path.name}:{node.lineno}: {node.value!r}")
    return bad


@pytest.mark.parametrize("fw", FRAMEWORK_MODULES)
def test_no_adapter_lists_check_ids_outside_its_declared_deviations(fw):
    """Which checks reach a variant is the harness's business (it reads ``capabilities``): an
    adapter names check ids only as keys of its known deviations, never in lists to dodge."""
    bad = _check_ids_outside_declarations(MODULES[fw])
    assert not bad, ("check ids outside known_deviations/upstream declarations (declare the "
                     "options the variant honours in `capabilities` instead):\n" + "\n".join(bad))


def test_the_check_id_scan_sees_a_dodge(tmp_path):
    dodge = tmp_path / "dodge.py"
    dodge.write_text('_UNREACHED = {"grpo": ("aggregate/rejects-mask-with-hole",)}\n'
                     'KNOWN_DEVIATIONS = {"aggregate/padding-*": "x (a.py:1)"}\n')
    assert _check_ids_outside_declarations(dodge) == [
        "dodge.py:1: 'aggregate/rejects-mask-with-hole'"]


# --- framework defaults ----------------------------------------------------------------------------

def _defaults_keys(path: Path) -> dict[str, int]:
    """The string keys of the dicts that the adapter's ``*defaults`` functions return (a dict
    literal returned, assigned to a name that is returned, or ``update``d into it)."""
    tree = ast.parse(path.read_text())
    keys: dict[str, int] = {}

    def take(d):
        if isinstance(d, ast.Dict):
            for k in d.keys:
                if isinstance(k, ast.Constant) and isinstance(k.value, str):
                    keys.setdefault(k.value, k.lineno)

    for fn in ast.walk(tree):
        if not (isinstance(fn, ast.FunctionDef) and fn.name.endswith("defaults")):
            continue
        returned = {r.value.id for r in ast.walk(fn)
                    if isinstance(r, ast.Return) and isinstance(r.value, ast.Name)}
        for node in ast.walk(fn):
            if isinstance(node, ast.Return):
                take(node.value)
            elif isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id in returned for t in node.targets):
                take(node.value)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "update" and isinstance(node.func.value, ast.Name)
                  and node.func.value.id in returned):
                for arg in node.args:
                    take(arg)
    return keys


@pytest.mark.parametrize("fw", FRAMEWORK_MODULES)
def test_framework_defaults_keys_are_the_contracts(fw):
    keys = _defaults_keys(MODULES[fw])
    assert keys, f"found no framework_defaults dict in {MODULES[fw].name}"
    outside = {k: line for k, line in keys.items() if k not in DEFAULTS_KEYS}
    assert not outside, (f"{MODULES[fw].name}: framework_defaults keys outside "
                         f"conformance.contract.DEFAULTS_KEYS: {outside}")


# --- pins ------------------------------------------------------------------------------------------

def test_pyproject_extras_pin_the_versions_in_pins():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for fw in ("trl", "torchrl", "liger"):
        assert extras[fw] == [pins.requirement(fw)], (
            f"pyproject.toml's [{fw}] extra is {extras[fw]}, pins.py says {pins.requirement(fw)}")
        assert pins.SETUP[fw] == ("pip", [pins.requirement(fw)])


@pytest.mark.parametrize("name,adapter", _adapters())
def test_each_adapter_declares_its_pinned_framework(name, adapter):
    assert adapter.framework == pins.framework(_framework_of(name))


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """The string literals of a Python file that are not docstrings; the lines of a shell
    script that are not comments."""
    text = path.read_text()
    if path.suffix == ".sh":
        return [(i, line) for i, line in enumerate(text.splitlines(), 1)
                if not line.lstrip().startswith("#")]
    tree = ast.parse(text)
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in docstrings]


@pytest.mark.parametrize("fw", FRAMEWORK_MODULES)
def test_no_adapter_or_install_script_hard_codes_its_version(fw):
    version = re.compile(rf"(?<![\w.]){re.escape(pins.PINS[fw])}(?![\w.])")
    for path in [MODULES[fw], *ADAPTERS.glob(f"{fw}_install.sh")]:
        spelt = [f"{path.name}:{line}" for line, s in _code_strings(path) if version.search(s)]
        assert not spelt, f"{spelt} spell out {fw}'s version {pins.PINS[fw]}: read it from pins.py"


def test_every_scripted_install_exists_and_reads_pins():
    for fw, (how, what) in pins.SETUP.items():
        assert fw in pins.PINS
        if how == "script":
            text = (ADAPTERS / what).read_text()
            assert "conformance.adapters.pins" in text, f"{what} does not read pins.py"


# --- support: framework-free, imports no framework and no harness ------------------------------------

ALLOWED_IMPORTS = {"__future__", "dataclasses", "inspect", "types", "typing", "sys", "torch",
                   "refimpl", "conformance", "conformance.contract", "conformance.adapters",
                   "conformance.adapters.pins"}


@pytest.mark.parametrize("module", ["support.py", "pins.py"])
def test_helpers_import_no_framework_and_no_harness(module):
    tree = ast.parse((ADAPTERS / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported <= ALLOWED_IMPORTS, f"{module} imports {sorted(imported - ALLOWED_IMPORTS)}"


class _Variant:
    name = "acme-grpo"
    capabilities = {"agg": ["seq-mean-token-mean"], "value_loss.agg": ["token-mean"],
                    "dual_clip": False, "batch_normalized_advantages.eps": False}


def test_honour_is_the_capability_backstop():
    v = _Variant()
    assert support.honour(v, "agg", "seq-mean-token-mean", "aggregate") == "seq-mean-token-mean"
    assert support.honour(v, "agg", "sequence-mean", "aggregate") == "sequence-mean"   # unknown
    with pytest.raises(Unsupported, match="acme-grpo does not honour"):
        support.honour(v, "agg", "token-mean", "aggregate")
    assert support.honour(v, "agg", "token-mean", "value_loss") == "token-mean"        # narrowed
    with pytest.raises(Unsupported):
        support.honour(v, "agg", "seq-mean-token-mean", "value_loss")
    assert support.honour(v, "dual_clip", None, "ppo_clip_loss") is None
    with pytest.raises(Unsupported, match="why"):
        support.honour(v, "dual_clip", 3.0, "ppo_clip_loss", why="why")
    assert support.honour(v, "eps", 1e-8, "batch_normalized_advantages", default=1e-8) == 1e-8
    assert support.honour(v, "eps", 1e-3, "group_normalized_advantages", default=1e-6) == 1e-3
    with pytest.raises(Unsupported):
        support.honour(v, "eps", 1e-3, "batch_normalized_advantages", default=1e-8)
    assert support.translate(v, "agg", "seq-mean-token-mean", {"seq-mean-token-mean": 1}) == 1
    assert support.translate(v, "agg", "mean", {}, unknown="pass") == "mean"
    with pytest.raises(Unsupported, match="no counterpart"):
        support.translate(v, "agg", "mean", {"seq-mean-token-mean": 1})


def test_declarations_follow_the_capabilities():
    common = {"a/x": "always (a.py:1)"}
    seq = support.when("agg", support.SEQ_MEAN_MODES, {"a/y": "seq (a.py:2)", "a/x": "more (a.py:3)"})
    token = support.when("value_loss.agg", "token-mean", {"a/z": "critic (a.py:4)"})
    assert support.declarations({"agg": ["token-mean"]}, common, seq, token) == {
        "a/x": "always (a.py:1)", "a/z": "critic (a.py:4)"}
    assert support.declarations(_Variant.capabilities, common, seq, token) == {
        "a/x": "always (a.py:1); more (a.py:3)", "a/y": "seq (a.py:2)", "a/z": "critic (a.py:4)"}
    assert support.declarations({}, seq) == {"a/y": "seq (a.py:2)", "a/x": "more (a.py:3)"}


def test_contiguous_groups_round_trip_and_refuse_unequal_sizes():
    ids = torch.tensor([4, 9, 2, 9, 4, 2])
    order, G = support.contiguous_groups(ids, "why")
    assert G == 2 and ids[order].tolist() == [2, 2, 4, 4, 9, 9]
    x = torch.arange(6.0)
    assert torch.equal(support.restore(x[order], order), x)
    slots = support.slots(order)
    assert [ids[order][s] for s in slots] == ids.tolist()
    with pytest.raises(Unsupported, match="sizes \\[1, 2\\]: why"):
        support.contiguous_groups(torch.tensor([0, 0, 1]), "why")
    with pytest.raises(Unsupported):
        support.contiguous_groups(ids, "why", torch.zeros(5))


def test_kl_kind_identifies_the_contracts_estimators():
    for kind in KL_KINDS:
        assert support.kl_kind_of(lambda lp, ref, k=kind: refimpl.kl_estimate(lp, ref, None, k)) == kind
    assert support.kl_kind_of(lambda lp, ref: (lp - ref).abs()) is None
    assert support.kl_kind(0.5, 0.5) == "k1"


def test_small_helpers():
    assert support.cite("a/b.py", 12, "liger") == f"a/b.py:12, liger-kernel {pins.PINS['liger']}"
    assert support.citer("trl")("a.py:3") == f"a.py:3, trl {pins.PINS['trl']}"
    calls = []
    out = support.per_pair(lambda i: torch.tensor(float(i)), 3, whole=lambda: calls.append(1))
    assert out.tolist() == [0.0, 1.0, 2.0] and calls == [1]
    like = torch.zeros(2, 3)
    assert support.per_token(torch.tensor([1.0, 2.0]), like).tolist() == [[1.0] * 3, [2.0] * 3]

    @__import__("dataclasses").dataclass
    class Config:
        beta: float = 0.1
        modes: list = __import__("dataclasses").field(default_factory=lambda: ["x"])
    assert support.field_default(Config, "beta") == 0.1 and support.field_default(Config, "modes") == ["x"]
    assert support.param_default(lambda a, b=3: None, "b") == 3
