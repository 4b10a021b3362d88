"""OpenRLHF 0.11.2 adapters (conformance/adapters/openrlhf.py): every variant certifies with no
fail and no error, every declared deviation occurs, and every declaration cites file:line.

Skipped unless OpenRLHF is installed (bash conformance/adapters/openrlhf_install.sh); its package
``__init__`` is empty, so the import below pulls in none of its heavy dependencies.
"""

import fnmatch
import re
import sys

import pytest

pytest.importorskip("openrlhf", reason="OpenRLHF is not installed "
                    "(bash conformance/adapters/openrlhf_install.sh)")

from conformance.adapters import openrlhf as adapters  # noqa: E402
from conformance.runner import certify  # noqa: E402

CITATION = re.compile(r"[\w./-]+\.py:\d+")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("openrlhf-reports")
    return {a.name: certify(a, str(out), isolate=False) for a in adapters.VARIANTS}


@pytest.mark.parametrize("adapter", adapters.VARIANTS, ids=lambda a: a.name)
def test_variant_certifies_without_fail_or_error(adapter, reports):
    data = reports[adapter.name]
    bad = [f"{r['status']} {r['id']}: {r['message']}" for r in data["checks"]
           if r["status"] in ("fail", "error")]
    assert not bad, "\n".join(bad)
    assert data["warnings"] == []


@pytest.mark.parametrize("adapter", adapters.VARIANTS, ids=lambda a: a.name)
def test_every_declared_deviation_occurs(adapter, reports):
    rows = reports[adapter.name]["checks"]
    stale = [pattern for pattern in adapter.known_deviations
             if not any(fnmatch.fnmatchcase(r["id"], pattern) and r["status"] == "xfail" for r in rows)]
    assert not stale, f"declared but never xfail: {stale}"


@pytest.mark.parametrize("adapter", adapters.VARIANTS, ids=lambda a: a.name)
def test_every_shim_and_deviation_cites_file_and_line(adapter):
    sentences = {**adapter.shims, **adapter.known_deviations}
    missing = [key for key, text in sentences.items()
               if not CITATION.search(text) or "openrlhf 0.11.2" not in text]
    assert not missing


@pytest.mark.parametrize("adapter", adapters.VARIANTS, ids=lambda a: a.name)
def test_framework_defaults_are_read_from_openrlhf(adapter):
    defaults = adapter.framework_defaults()
    assert defaults["clip_low"] == defaults["clip_high"] == 0.2
    assert defaults["kl_estimator"] == "k1" and defaults["kl_in"] == "reward"
    assert defaults["loss_agg"] in ("token-mean", "seq-mean-token-mean")


def test_stand_ins_do_not_outlive_loading():
    adapters._fw()
    for name in ("deepspeed", "ray", "openrlhf.models.utils", "openrlhf.trainer.ray.launcher"):
        module = sys.modules.get(name)
        assert module is None or getattr(module, "__file__", None), name
