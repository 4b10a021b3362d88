"""The benchmark harness (``python -m benchmarks``): checks before timing, the rows it writes, the
Markdown and plot rendered from results.json alone, the bridge between environments and the
switch that turns refimpl's validation off. Nothing here asserts a time."""

from __future__ import annotations

import json
import math
import types

import pytest
import torch

import refimpl
from benchmarks import bridge, harness, report
from benchmarks.__main__ import main
from benchmarks.novalidate import UnknownHelper, novalidate
from benchmarks.peers import Entry
from refimpl import _checks

REQUIRED_ROW = {"function", "impl", "device", "B", "T", "median_s", "min_s", "max_s"}


def _fake_peer(calls: dict) -> types.ModuleType:
    """A framework whose gae is wrong by 1e-2, whose kl_estimate raises, whose aggregate is right
    (refimpl's own) and which does not implement dpo_loss."""
    def counted(name, fn):
        def prepare(kw):
            def call():
                calls[name] = calls.get(name, 0) + 1
                return fn(kw)
            return call
        return prepare

    def wrong_gae(kw):
        adv, ret = refimpl.gae(**kw)
        return adv * (1 + 1e-2), ret * (1 + 1e-2)

    def raises(kw):
        raise RuntimeError("the framework fell over")

    module = types.ModuleType("fake")
    module.FRAMEWORK = "fake"
    module.available = lambda: True
    module.SKIPPED = {"dpo_loss": "fake has no DPO loss"}
    module.entries = lambda: {
        "gae": Entry(prepare=counted("gae", wrong_gae), grad=False, source="fake.py:1"),
        "kl_estimate": Entry(prepare=counted("kl_estimate", raises)),
        "aggregate": Entry(prepare=counted("aggregate", lambda kw: refimpl.aggregate(**kw)),
                           source="fake.py:3"),
    }
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny in-process run: results.json's content, the output folder, the fake's calls."""
    out = tmp_path_factory.mktemp("bench")
    calls: dict = {}
    threads = torch.get_num_threads()
    status = main(["--out", str(out), "--sizes", "16x32", "--functions",
                   "gae,kl_estimate,aggregate,dpo_loss", "--impls",
                   "refimpl,refimpl-novalidate,memory-bound,fake", "--no-combine", "--warmup", "1",
                   "--min-reps", "2", "--max-reps", "3", "--budget", "0"],
                  peer_modules={"fake": _fake_peer(calls)})
    assert status == 0
    assert torch.get_num_threads() == threads, "the run must restore torch's thread count"
    return json.loads((out / "results.json").read_text()), out, calls


def _rows(results, **match):
    return [r for r in results["rows"] if all(r.get(k) == v for k, v in match.items())]


def test_rows_have_the_required_keys_and_every_case(run):
    results, _, _ = run
    for row in results["rows"]:
        assert REQUIRED_ROW <= set(row), row
    assert {r["impl"] for r in results["rows"]} == {"refimpl", "refimpl-novalidate",
                                                     "memory-bound", "fake"}
    # forward only for gae (no gradient), both modes for kl_estimate, aggregate and dpo_loss
    assert {r["mode"] for r in _rows(results, function="gae")} == {"fwd"}
    for f in ("kl_estimate", "aggregate", "dpo_loss"):
        assert {r["mode"] for r in _rows(results, function=f, impl="refimpl")} == {"fwd", "fwd+bwd"}
    h = results["harness"]
    for key in ("torch", "python", "platform", "cpu_count", "threads", "clock", "tolerance",
                "sizes", "seed", "date", "versions", "skipped", "novalidate_patch"):
        assert key in h, key
    assert h["clock"]["cpu"] == "thread CPU time, 1 torch thread"
    assert h["threads"] == 1
    assert h["tolerance"]["rel_error"] == harness.TOLERANCE


def test_builtin_implementations_pass_the_check_and_are_timed(run):
    results, _, _ = run
    for impl in ("refimpl", "refimpl-novalidate", "memory-bound"):
        rows = _rows(results, impl=impl)
        assert rows and all(r["status"] == "ok" for r in rows), rows
        for r in rows:
            assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"] and r["reps"] >= 2
            assert r["wall_min_s"] > 0
    for r in _rows(results, status="ok"):
        assert r["ratio_memory"] is not None
        assert (r["ratio_fastest"] is None) == (r["impl"] == "memory-bound")
        if r["impl"] != "memory-bound":
            assert r["ratio_fastest"] >= 1.0


def test_a_wrong_output_is_a_mismatch_and_is_not_timed(run):
    results, _, calls = run
    (row,) = _rows(results, impl="fake", function="gae")
    assert row["status"] == "mismatch"
    assert row["rel_error"] == pytest.approx(1e-2, rel=1e-3)
    assert row["median_s"] is None and row["min_s"] is None
    assert calls["gae"] == 1, "a mismatching implementation was called again after its check"


def test_an_implementation_that_raises_is_an_error_and_the_run_goes_on(run):
    results, _, calls = run
    rows = _rows(results, impl="fake", function="kl_estimate")
    assert {r["status"] for r in rows} == {"error"} and len(rows) == 2
    assert "the framework fell over" in rows[0]["note"]
    (fwd,) = _rows(results, impl="fake", function="aggregate", mode="fwd")
    assert fwd["status"] == "ok" and fwd["rel_error"] <= harness.TOLERANCE
    assert calls["aggregate"] > 3          # checked, warmed up and timed in both modes


def test_skipped_functions_are_recorded(run):
    results, _, _ = run
    assert {"framework": "fake", "function": "dpo_loss", "reason": "fake has no DPO loss",
            "env": harness.env_label()} in results["harness"]["skipped"]
    assert not _rows(results, impl="fake", function="dpo_loss")


def test_markdown_and_plot_render_from_the_json_alone(run, tmp_path):
    results, out, _ = run
    assert (out / "results.md").is_file() and (out / "results.png").stat().st_size > 1000
    path = tmp_path / "results.json"
    path.write_text((out / "results.json").read_text())
    text = report.render(json.loads(path.read_text()))
    for needle in ("## gae", "## kl_estimate", "## aggregate", "## dpo_loss",
                   "refimpl vs the fastest framework", "mismatch (0.01)", "error",
                   "fake not timed: fake has no DPO loss", "thread CPU time", "## Spread"):
        assert needle in text, needle
    assert report.main([str(path)]) == 0
    assert (tmp_path / "results.md").read_text() == text
    assert (tmp_path / "results.png").is_file()


def test_relative_error():
    x = torch.tensor([1.0, 2.0])
    assert harness.relative_error(x, x.double()) == 0.0
    assert harness.relative_error((x, x * 1.1), (x, x)) == pytest.approx(0.1)
    assert harness.relative_error(x, torch.ones(3)) == math.inf
    assert harness.relative_error((x,), (x, x)) == math.inf
    assert harness.relative_error(torch.tensor([float("nan"), 1.0]), x) == math.inf


def _row(impl, median, function="gae", B=64, T=256, **more):
    spread = (lambda f: median * f) if median is not None else (lambda f: None)
    return {"function": function, "impl": impl, "device": "cpu", "mode": "fwd", "B": B, "T": T,
            "elements": B * T, "status": "ok", "median_s": median, "min_s": spread(0.75),
            "max_s": spread(1.25), "wall_min_s": median, "wall_max_s": median, **more}


def test_bridge_scales_other_environments_through_the_anchor():
    main_run = {"rows": [_row("refimpl", 2.0), _row("memory-bound", 1.0),
                         _row("refimpl", 1.0, T=512)], "harness": {"skipped": []}}
    other = {"rows": [_row("refimpl", 4.0), _row("memory-bound", 2.0), _row("verl", 8.0),
                      _row("verl", 3.0, T=1024), _row("verl", None, T=512, status="mismatch")],
             "harness": {"versions": {"venv-verl": {"verl": "0.9.1"}}, "skipped": [],
                         "torch": "2.13.0"}}
    record = bridge.combine(main_run, other, "venv-verl")
    assert record["anchor_scale"] == {"median": 0.5, "min": 0.5, "max": 0.5}
    assert record["memory_ratio"]["median"] == 0.5
    verl = {r["T"]: r for r in main_run["rows"] if r["impl"] == "verl"}
    assert set(verl) == {256, 512, 1024}
    assert len([r for r in main_run["rows"] if r["impl"] == "refimpl"]) == 2   # theirs not added
    ok = verl[256]
    assert (ok["median_s"], ok["min_s"], ok["max_s"]) == (4.0, 3.0, 5.0)
    assert ok["raw_median_s"] == 8.0 and ok["anchor_scale"] == 0.5
    assert ok["bridged"] is True and ok["env"] == "venv-verl"
    assert verl[1024]["status"] == "unbridged" and verl[1024]["median_s"] is None
    assert verl[512]["status"] == "mismatch"
    assert main_run["harness"]["versions"]["venv-verl"] == {"verl": "0.9.1"}
    harness.add_ratios(main_run["rows"])
    assert ok["ratio_fastest"] == 2.0 and ok["ratio_memory"] == 4.0
    assert "venv-verl" in report.render(main_run)


def test_novalidate_switches_validation_off_and_back_on():
    kw = {"rewards": torch.ones(2, 4), "values": torch.zeros(2, 4),
          "mask": torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)}     # a hole
    originals = {n: getattr(_checks, n) for n in _checks.__all__}
    with pytest.raises(ValueError, match="prefix"):
        refimpl.gae(**kw)
    with novalidate() as patched:
        refimpl.gae(**kw)                      # no ValueError
        refimpl.ppo_clip_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.ones(2),   # (B,) adv
                              kw["mask"].float())
        assert "refimpl._checks.bool_mask" in patched
    assert {n: getattr(_checks, n) for n in _checks.__all__} == originals
    with pytest.raises(ValueError, match="prefix"):
        refimpl.gae(**kw)


def test_novalidate_refuses_a_helper_it_does_not_know(monkeypatch):
    def shiny(name, x):
        return x
    shiny.__module__ = _checks.__name__
    monkeypatch.setattr(_checks, "shiny", shiny, raising=False)
    with pytest.raises(UnknownHelper, match="shiny"):
        with novalidate():
            pass

    def float_tensor(name, x, ndim=None, strict=True):
        return x
    float_tensor.__module__ = _checks.__name__
    monkeypatch.delattr(_checks, "shiny")
    monkeypatch.setattr(_checks, "float_tensor", float_tensor)
    with pytest.raises(UnknownHelper, match="float_tensor"):
        with novalidate():
            pass


@pytest.mark.parametrize("argv", [["--functions", "nope"], ["--sizes", "64by256"],
                                  ["--impls", "refimpl,acme"], ["--max-reps", "-1"]])
def test_a_bad_argument_is_one_line_and_exit_status_2(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path)] + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err, err
