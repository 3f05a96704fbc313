"""`python -m bench --quick` runs the store benchmark end to end and reports every figure (not its speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.store import TASK_LEVELS


def test_quick_store_benchmark_reports_every_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, data = tmp_path / "out", tmp_path / "data"

    assert main(["--quick", "--only", "store", "--out", str(out), "--data-dir", str(data)]) == 0

    [path] = out.glob("store-*.json")
    result = json.loads(path.read_text())
    assert result["mode"] == "quick"
    assert result["machine"]["cpu_count"] > 0
    assert result["disk"]["path"].startswith(str(data.resolve()))
    assert list(data.iterdir()) == []  # the temporary store and bound directories are removed

    assert [level["tasks"] for level in result["store"]] == list(TASK_LEVELS)
    for level in result["store"]:
        for key in ("appends_per_s", "events_per_s", "p50_ms", "p99_ms", "fsyncs_per_s", "mean_group_size"):
            assert level[key] > 0, (level["tasks"], key)
        assert level["events"] == 8 * level["appends"]
        assert level["p50_ms"] <= level["p99_ms"]

    batches = [b["batch_size"] for b in result["bound"]]
    assert batches[0] == 1
    assert batches[-1] == 512
    assert round(result["store"][-1]["mean_group_size"]) in batches
    for bound in result["bound"]:
        for key in ("appends_per_s", "events_per_s", "commits_per_s"):
            assert bound[key] > 0, (bound["batch_size"], key)

    assert result["ratio"]["tasks"] == 512
    assert result["ratio"]["ratio"] > 0
    assert result["catch_up"]["events"] >= sum(level["events"] for level in result["store"])
    assert result["catch_up"]["events_per_s"] > 0
    assert result["peak_rss_mib"] > 0

    printed = capsys.readouterr().out
    assert "cores" in printed
    assert str(data.resolve()) in printed
    assert "appends/s" in printed
    assert str(path) in printed


def test_quick_saga_benchmark_reports_every_figure(tmp_path: Path) -> None:
    out, data = tmp_path / "out", tmp_path / "data"

    assert main(["--quick", "--only", "sagas", "--out", str(out), "--data-dir", str(data)]) == 0

    [path] = out.glob("sagas-*.json")
    result = json.loads(path.read_text())
    assert list(data.iterdir()) == []
    assert {(t["variant"], t["inflight"]) for t in result["throughput"]} == {
        ("ok", 8),
        ("ok", 32),
        ("compensating", 8),
        ("compensating", 32),
        ("ok+projections", 32),
        ("ok+http(demo)", 8),
    }
    for t in result["throughput"]:
        assert t["sagas"] > 0
        expected = "SagaCompensated" if t["variant"] == "compensating" else "SagaCompleted"
        assert set(t["endings"]) == {expected}
        # The real path: five appends per ok saga (start, intent, outcome + intent twice, outcome + end).
        assert t["appends_per_saga"] == (7 if t["variant"] == "compensating" else 5)
        assert t["deliveries_per_saga"] > 0
    assert result["step_overhead"]["samples"] > 0
    assert result["bound"]["ratio"] > 0
