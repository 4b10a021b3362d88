"""docs/contract.md is the contract users read: these tests keep it in agreement with the code.

The signatures in its function tables are refimpl's; every canonical function, capability and
`framework_defaults` key is documented; the packaged copy is the same file; the example adapter
runs; the anchors the harness links to exist. Each failure says which file to fix.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import refimpl
from conformance import Unsupported, contract, contract_doc

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "contract.md"
PACKAGED = REPO / "conformance" / "contract.md"

#: anchor -> the heading line it must come from (the harness links check sections to these)
REQUIRED = {
    "conventions": "## Conventions",
    "shapes-and-masks": "### Shapes and masks",
    "padding-invariance": "### Padding invariance",
    "dtypes-devices-and-mutation": "### Dtypes, devices and mutation",
    "gradients": "### Gradients",
    "invalid-arguments": "### Invalid arguments",
    "returns-and-advantages": "## Returns and advantages",
    "kl": "## KL",
    "losses-on-tokens": "## Losses on tokens",
    "preferences": "## Preferences",
    "log-probabilities": "## Log-probabilities",
    "adapters": "## Adapters",
    "naming-an-adapter": "### Naming an adapter",
    "declarations": "### Declarations",
    "capabilities": "### Capabilities",
    "framework-defaults": "### Framework defaults",
    "what-an-adapter-may-and-may-not-do": "### What an adapter may and may not do",
    "a-complete-example": "### A complete example",
    "certification-and-statuses": "## Certification and statuses",
    "the-json-report": "## The JSON report",
    "training-steps": "## Training steps",
    "models": "### Models",
    "batch": "### Batch",
    "config-and-recipes": "### Config and recipes",
    "gradient-accumulation": "### Gradient accumulation",
    "returns": "### Returns",
    "checks": "### Checks",
    "short-runs": "### Short runs",
    "versions": "## Versions",
}


# --- the document and its packaged copy ---------------------------------------------------------

def test_packaged_copy_is_byte_identical():
    assert DOC.is_file(), "docs/contract.md is missing"
    assert PACKAGED.is_file(), "conformance/contract.md is missing: copy docs/contract.md there"
    assert DOC.read_bytes() == PACKAGED.read_bytes(), (
        "conformance/contract.md differs from docs/contract.md: edit docs/contract.md, then "
        "cp docs/contract.md conformance/contract.md")


def test_contract_doc_reads_the_packaged_copy():
    assert contract_doc.text() == PACKAGED.read_text(encoding="utf-8"), (
        "contract_doc.text() does not return conformance/contract.md (importlib.resources "
        "resolves the package elsewhere: reinstall with pip install -e .)")


def test_title_version_is_the_contract_version():
    first = DOC.read_text(encoding="utf-8").split("\n", 1)[0]
    assert first == f"# The rlconform contract (v{contract.CONTRACT_VERSION})", (
        f"docs/contract.md's first line is {first!r}; it should name the version in "
        f"conformance/contract.py, CONTRACT_VERSION = {contract.CONTRACT_VERSION!r}")
    assert contract_doc.VERSION == contract.CONTRACT_VERSION, (
        f"contract_doc.VERSION {contract_doc.VERSION!r} != CONTRACT_VERSION "
        f"{contract.CONTRACT_VERSION!r}: change the title or conformance/contract.py")


def test_every_required_anchor_exists():
    lines = set(contract_doc.text().splitlines())
    anchors = contract_doc.sections()
    for anchor, heading in REQUIRED.items():
        present = heading in lines
        assert present, (f"docs/contract.md lacks the heading line {heading!r} "
                                  f"(level and words are fixed: the harness links to #{anchor})")
        assert anchor in anchors, (f"docs/contract.md has no section #{anchor}; a heading was "
                                   f"renamed or a repeated heading shifted its slug to -1")


def test_contract_doc_is_standard_library_only():
    tree = ast.parse(Path(contract_doc.__file__).read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
    foreign = sorted(m for m in imported if m not in sys.stdlib_module_names and m != "__future__")
    assert not foreign, f"conformance/contract_doc.py imports {foreign}: it must use the standard library only"


# --- the function tables against refimpl --------------------------------------------------------

def _parse_signature(sig: str) -> tuple[str, list[tuple[str, object]]]:
    """'gae(rewards, values, mask, gamma=1.0)' -> ('gae', [('rewards', EMPTY), ..., ('gamma', 1.0)])."""
    fn = ast.parse(f"def {sig}: pass").body[0]
    args = fn.args
    assert not (args.posonlyargs or args.kwonlyargs or args.vararg or args.kwarg), (
        f"docs/contract.md: {sig} should list plain arguments only")
    defaults = [inspect.Parameter.empty] * (len(args.args) - len(args.defaults))
    defaults += [ast.literal_eval(d) for d in args.defaults]
    return fn.name, [(a.arg, d) for a, d in zip(args.args, defaults)]


def _render(name: str, fn) -> str:
    """refimpl's signature written as the tables write it (to paste into docs/contract.md)."""
    def value(v):
        if isinstance(v, str):
            return f'"{v}"'
        return re.sub(r"e-0(\d)", r"e-\1", repr(v))
    params = [p.name if p.default is inspect.Parameter.empty else f"{p.name}={value(p.default)}"
              for p in inspect.signature(fn).parameters.values()]
    return f"{name}({', '.join(params)})"


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b if a is not inspect.Parameter.empty else b is a


SIGNATURES = contract_doc.signatures()


def test_function_tables_are_found():
    assert len(SIGNATURES) >= len(refimpl.CANONICAL), (
        f"contract_doc.signatures() found {sorted(SIGNATURES)} in the tables of "
        f"{contract_doc.FUNCTION_SECTIONS}: the first column of each row should be the call in a "
        "code span, `name(args)`")


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_table_signature_is_refimpls(name):
    sig = SIGNATURES[name]
    fn = getattr(refimpl, name, None)
    assert callable(fn), f"docs/contract.md documents {name}, which refimpl does not export"
    expected = _render(name, fn)
    parsed_name, params = _parse_signature(sig)
    actual = [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]
    assert parsed_name == name
    assert [p for p, _ in params] == [p for p, _ in actual], (
        f"docs/contract.md has `{sig}`, but refimpl's argument names/order give `{expected}`")
    for (p, doc_default), (_, code_default) in zip(params, actual):
        assert _same(code_default, doc_default), (
            f"docs/contract.md has `{sig}`: the default of {p} is {doc_default!r} there, "
            f"{code_default!r} in refimpl; the table should read `{expected}`")


def _public_functions() -> list[str]:
    out = []
    for name in refimpl.__all__:
        obj = getattr(refimpl, name)
        if isinstance(obj, types.ModuleType) or inspect.isclass(obj) or not callable(obj):
            continue
        if getattr(obj, "__module__", "").startswith("refimpl.tabular"):
            continue
        out.append(name)
    return out


@pytest.mark.parametrize("name", sorted(set(refimpl.CANONICAL) | set(_public_functions())))
def test_every_canonical_and_exported_function_is_documented(name):
    assert name in SIGNATURES, (
        f"refimpl exports {name}, but no function table of docs/contract.md lists it: add a row "
        f"`{_render(name, getattr(refimpl, name))}` to the right table")


# --- vocabularies ---------------------------------------------------------------------------------

def _table_rows(anchor: str) -> dict[str, str]:
    """first-column code span -> the whole row, for the tables of one section."""
    rows = {}
    for line in contract_doc.sections()[anchor][1].splitlines():
        m = re.match(r"^\|\s*`([^`]+)`\s*\|", line)
        if m:
            rows[m.group(1)] = line
    return rows


def test_every_capability_is_documented_with_its_default():
    rows = _table_rows("capabilities")
    for name, (default, _meaning) in contract.CAPABILITIES.items():
        assert name in rows, (f"capability {name!r} (conformance/contract.py) has no row in "
                              "docs/contract.md, ### Capabilities")
        cells = rows[name].split("|")
        if isinstance(default, tuple):
            missing = [v for v in default if f'"{v}"' not in cells[2]]
            assert not missing, (f"docs/contract.md, capability {name}: the default column lacks "
                                 f"{missing} (default {list(default)})")
        else:
            assert f"`{default}`" in cells[2], (f"docs/contract.md, capability {name}: the default "
                                               f"column should read `{default}`")
    extra = sorted(set(rows) - set(contract.CAPABILITIES))
    assert not extra, (f"docs/contract.md documents capabilities {extra} that conformance/contract.py "
                       "does not know: remove them or add them to CAPABILITIES")


def test_every_framework_defaults_key_is_documented():
    rows = _table_rows("framework-defaults")
    missing = sorted(set(contract.DEFAULTS_KEYS) - set(rows))
    assert not missing, (f"DEFAULTS_KEYS {missing} have no row in docs/contract.md, "
                         "### Framework defaults")
    extra = sorted(set(rows) - set(contract.DEFAULTS_KEYS))
    assert not extra, (f"docs/contract.md documents framework_defaults keys {extra} that "
                       "conformance/contract.py's DEFAULTS_KEYS lacks")


# --- the complete example ---------------------------------------------------------------------------

def _example_source() -> str:
    body = contract_doc.sections()["a-complete-example"][1]
    blocks = re.findall(r"^```python\n(.*?)^```", body, flags=re.S | re.M)
    assert blocks, "docs/contract.md, ### A complete example, has no ```python block"
    return blocks[0]


def _example_adapter():
    namespace = {"__name__": "acme_adapter"}
    exec(compile(_example_source(), "docs/contract.md (A complete example)", "exec"), namespace)
    found = [v for v in namespace.values() if getattr(v, "__module__", None) == "acme_adapter"
             and isinstance(getattr(v, "name", None), str)]
    assert len(found) == 1, ("the example in docs/contract.md should define exactly one adapter "
                             f"(an object or class with a `name`), found {found}")
    obj = found[0]
    return obj() if isinstance(obj, type) else obj


@pytest.fixture
def no_acme(monkeypatch):
    """The made-up framework is not installed: importing it fails."""
    for mod in ("acme_rl", "acme_rl.losses", "acme_rl.advantages", "acme_rl.config"):
        monkeypatch.setitem(sys.modules, mod, None)


@pytest.fixture
def fake_acme(monkeypatch):
    """acme-rl as the example's docstring describes it, computed here from the equations."""
    def policy_loss(log_probs, old_log_probs, advantages, response_mask, eps_low, eps_high,
                    max_len):
        ratio = torch.exp(log_probs - old_log_probs)
        per_token = torch.maximum(-advantages * ratio,
                                  -advantages * ratio.clamp(1 - eps_low, 1 + eps_high))
        return (per_token * response_mask).sum() / (log_probs.shape[0] * max_len)

    def group_advantages(rewards):
        return rewards - rewards.mean(dim=1, keepdim=True)

    @dataclass
    class GRPOConfig:
        clip_eps: float = 0.2
        num_generations: int = 8
        kl_coef: float = 0.0
        max_new_tokens: int = 1024

    pkg = types.ModuleType("acme_rl")
    for sub, attrs in {"losses": {"policy_loss": policy_loss},
                       "advantages": {"group_advantages": group_advantages},
                       "config": {"GRPOConfig": GRPOConfig}}.items():
        mod = types.ModuleType(f"acme_rl.{sub}")
        for k, v in attrs.items():
            setattr(mod, k, v)
        setattr(pkg, sub, mod)
        monkeypatch.setitem(sys.modules, f"acme_rl.{sub}", mod)
    monkeypatch.setitem(sys.modules, "acme_rl", pkg)


def _ppo_inputs(gen, B=4, T=6, per_token=False):
    lengths = torch.tensor([6, 3, 1, 5])[:B]
    mask = torch.arange(T)[None, :] < lengths[:, None]
    logp = -torch.rand(B, T, generator=gen, dtype=torch.float64) - 0.1
    old_logp = logp + 0.3 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    adv = torch.randn((B, T) if per_token else (B,), generator=gen, dtype=torch.float64)
    return logp, old_logp, adv, mask


def test_example_declarations_are_valid(no_acme):
    adapter = _example_adapter()
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", adapter.name), (
        f"the example's name {adapter.name!r} is not a valid report file name")
    errors = contract.declaration_errors(adapter)
    assert not errors, f"the example's capabilities in docs/contract.md are invalid: {errors}"
    for attr in ("framework", "shims", "capabilities", "known_deviations", "upstream",
                 "framework_defaults"):
        assert getattr(adapter, attr, None), f"the example in docs/contract.md lacks `{attr}`"
    for kind in ("shims", "known_deviations"):
        for key, sentence in getattr(adapter, kind).items():
            assert re.search(r"[\w/.-]+\.py:\d+", sentence), (
                f"the example's {kind}[{key!r}] should name the framework's file.py:LINE")
    assert set(adapter.upstream) <= set(adapter.known_deviations), (
        "the example's upstream keys should be keys of its known_deviations")


@contextlib.contextmanager
def _refused(what: str):
    """The call must raise Unsupported, and before it imports the framework."""
    try:
        yield
    except Unsupported:
        return
    except ImportError as exc:
        pytest.fail(f"the example in docs/contract.md imports acme-rl ({exc}) before refusing "
                    f"{what}: raise Unsupported first")
    pytest.fail(f"the example in docs/contract.md accepts {what}; it should raise "
                "conformance.Unsupported")


def test_example_raises_unsupported_for_options_it_does_not_honour(no_acme):
    adapter = _example_adapter()
    gen = torch.Generator().manual_seed(0)
    logp, old_logp, adv, mask = _ppo_inputs(gen)
    honoured = contract.capability(adapter, "agg")
    other = next(m for m in contract.AGG_MODES if m not in honoured)
    with _refused(f"ppo_clip_loss(agg={other!r})"):
        adapter.ppo_clip_loss(logp, old_logp, adv, mask, agg=other)
    if contract.capability(adapter, "dual_clip") is False:
        with _refused("ppo_clip_loss(dual_clip=3.0)"):
            adapter.ppo_clip_loss(logp, old_logp, adv, mask, dual_clip=3.0, agg=honoured[0])
    scale = next(s for s in contract.SCALES if s not in contract.capability(adapter, "scale"))
    scores = torch.randn(6, generator=gen, dtype=torch.float64)
    ids = torch.tensor([0, 1, 0, 1, 0, 1])
    with _refused(f"group_normalized_advantages(scale={scale!r})"):
        adapter.group_normalized_advantages(scores, ids, scale=scale)
    with _refused("groups of unequal size"):
        adapter.group_normalized_advantages(scores, torch.tensor([0, 0, 0, 0, 1, 1]), scale="none")


def test_example_translates_calling_conventions_only(fake_acme):
    """With acme-rl as its docstring describes it, the example returns refimpl's values."""
    adapter = _example_adapter()
    gen = torch.Generator().manual_seed(1)
    for per_token in (False, True):
        for clip_high, norm_len in ((None, None), (0.28, 10)):
            logp, old_logp, adv, mask = _ppo_inputs(gen, per_token=per_token)
            kwargs = dict(clip_low=0.2, clip_high=clip_high, agg="seq-mean-token-sum-norm",
                          norm_len=norm_len)
            got = adapter.ppo_clip_loss(logp, old_logp, adv, mask, **kwargs)
            want = refimpl.ppo_clip_loss(logp, old_logp, adv, mask, **kwargs)
            torch.testing.assert_close(got, want, msg=lambda m: (
                f"the example's ppo_clip_loss in docs/contract.md disagrees with refimpl "
                f"({kwargs}, per_token={per_token}): {m}"))
    scores = torch.randn(6, generator=gen, dtype=torch.float64)
    ids = torch.tensor([7, 2, 2, 7, 2, 7])
    got = adapter.group_normalized_advantages(scores, ids, scale="none")
    want = refimpl.group_normalized_advantages(scores, ids, scale="none")
    torch.testing.assert_close(got, want, msg=lambda m: (
        "the example's group_normalized_advantages in docs/contract.md does not put the "
        f"advantages back in the caller's order: {m}"))
    defaults = adapter.framework_defaults()
    assert not contract.defaults_errors(defaults), (
        f"the example's framework_defaults in docs/contract.md: {contract.defaults_errors(defaults)}")


# --- contract_doc's API -------------------------------------------------------------------------

def test_quote_returns_the_section_and_rejects_unknown_anchors():
    text = contract_doc.quote("returns-and-advantages")
    assert text.startswith("## Returns and advantages"), "quote() should start with the heading"
    assert "gae(" in text, "quote('returns-and-advantages') should hold the gae row"
    assert "`value_loss(" not in text, "quote() should stop at the next section of its level"
    assert "### Capabilities" in contract_doc.quote("#adapters"), "a quote holds its subsections"
    with pytest.raises(KeyError, match="returns-and-advantages"):
        contract_doc.quote("returns-and-advantage")
    with pytest.raises(KeyError):
        contract_doc.quote("gae")


SYNTHETIC = """# Title (v9.9)

## First

```python
# not a heading
```

### Sub

text

## Second

### Sub
"""


def test_sections_skip_code_blocks_and_number_repeated_slugs(monkeypatch):
    contract_doc._parsed.cache_clear()
    monkeypatch.setattr(contract_doc, "text", lambda: SYNTHETIC)
    try:
        found = contract_doc.sections()
        assert list(found) == ["title-v99", "first", "sub", "second", "sub-1"], (
            f"sections() found {list(found)}: a comment in a code block was taken for a heading, "
            "or a repeated heading did not get GitHub's -1 suffix")
        assert "# not a heading" in found["first"][1] and "text" in found["first"][1], (
            "a section's body should run to the next heading of its level")
        assert "Second" not in found["first"][1]
    finally:
        contract_doc._parsed.cache_clear()


@pytest.mark.parametrize("heading,anchor", [
    ("Dtypes, devices and mutation", "dtypes-devices-and-mutation"),
    ("The rlconform contract (v1.1)", "the-rlconform-contract-v11"),
    ("What an adapter may and may not do", "what-an-adapter-may-and-may-not-do"),
    ("`train_step` and [links](x.md)", "train_step-and-links"),
    ("Log-probabilities", "log-probabilities"),
])
def test_slug_is_githubs(heading, anchor):
    assert contract_doc.slug(heading) == anchor


def test_link_points_at_a_file_a_reader_can_open(tmp_path):
    link = contract_doc.link("kl", from_dir=REPO / "reports")
    assert link == "../docs/contract.md#kl", f"link from reports/ should be relative, got {link}"
    path, _, fragment = contract_doc.link("capabilities", from_dir=tmp_path).partition("#")
    assert fragment == "capabilities"
    assert (tmp_path / path).resolve() == DOC.resolve(), f"{path} does not lead to docs/contract.md"
    assert contract_doc.link(from_dir=REPO) == "docs/contract.md"
    with pytest.raises(KeyError):
        contract_doc.link("no-such-section")


def test_every_check_names_a_section_of_the_contract():
    """A report row's clause links to docs/contract.md#<section>: the anchor must exist."""
    from conformance.checks import all_checks

    anchors = set(contract_doc.sections())
    bad = sorted({f"{c.id}: #{c.section}" for c in all_checks(thorough=True)
                  if c.section not in anchors})
    assert not bad, "checks whose section is not a heading of docs/contract.md:\n" + "\n".join(bad)


def test_quote_narrows_a_function_table_to_that_functions_row():
    text = contract_doc.quote("returns-and-advantages", "gae")
    rows = [ln for ln in text.splitlines() if ln.startswith("| `")]
    assert len(rows) == 1 and rows[0].startswith("| `gae("), text
    assert "| call |" in text or text.count("|---") == 1, f"the table header is missing:\n{text}"
    # a section without a row for the function is quoted whole
    assert contract_doc.quote("padding-invariance", "gae") == contract_doc.quote("padding-invariance")
