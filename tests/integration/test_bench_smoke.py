"""`python -m bench --quick` runs each benchmark end to end and reports every figure (not its speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import scaleout, tracing_overhead
from bench.__main__ import main
from bench.grpc_path import render
from bench.store import TASK_LEVELS


@pytest.fixture
def keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The saga rigs configure structlog for a benchmark process (WARNING, onto the stderr of the moment,
    loggers cached on first use); in the test process that would outlive the test and silence the
    ``capture_logs`` of later tests, so they leave the configuration alone here."""
    monkeypatch.setattr("bench.sagas.configure_logging", lambda *_args, **_kwargs: None)


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


@pytest.mark.usefixtures("keep_logging")
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


@pytest.mark.usefixtures("keep_logging")
def test_quick_grpc_benchmark_reports_every_figure(tmp_path: Path) -> None:
    out, data = tmp_path / "out", tmp_path / "data"

    assert main(["--quick", "--only", "grpc", "--out", str(out), "--data-dir", str(data)]) == 0

    [path] = out.glob("grpc-*.json")
    result = json.loads(path.read_text())
    assert result["mode"] == "quick"
    assert list(data.iterdir()) == []  # the server's data directory is removed with the rest
    assert [(t["variant"], t["inflight"]) for t in result["throughput"]] == [("ok", 8), ("ok(grpc)", 8)]
    for t in result["throughput"]:
        assert t["sagas"] > 0
        assert set(t["endings"]) == {"SagaCompleted"}
        assert t["deliveries_per_saga"] > 0
    embedded, grpc = result["throughput"]
    # The same real path on both stores: five appends per saga. Over gRPC they are counted on the client
    # side, every successful call (a resend the store answers idempotently too), so at least five.
    assert embedded["appends_per_saga"] == 5
    assert 5 <= grpc["appends_per_saga"] < 6
    assert embedded["fsyncs_per_s"] > 0
    assert grpc["fsyncs_per_s"] is None  # the server's own: not known to this process
    assert grpc["server_cpu_ms_per_saga"] > 0
    assert result["bound"]["writers"] == 8
    assert result["bound"]["appends_per_s"] > 0
    assert result["bound"]["ratio"] > 0
    assert result["grpc_vs_embedded"] > 0

    printed = render(result)
    assert "ok(grpc)" in printed
    assert "store bound over gRPC" in printed


@pytest.mark.usefixtures("keep_logging")
def test_quick_tracing_benchmark_reports_every_figure(tmp_path: Path) -> None:
    out, data = tmp_path / "out", tmp_path / "data"

    assert main(["--quick", "--only", "tracing", "--out", str(out), "--data-dir", str(data)]) == 0

    [path] = out.glob("tracing-*.json")
    result = json.loads(path.read_text())
    assert result["mode"] == "quick"
    assert list(data.iterdir()) == []  # the rigs' and the receiver's directories are removed
    names = ["http plain", "http trace=off", "http trace=1.0", "http trace=0.1"]
    assert [t["variant"] for t in result["throughput"]] == names
    for t in result["throughput"]:
        assert t["sagas"] > 0
        assert set(t["endings"]) == {"SagaCompleted"}
        assert t["appends_per_saga"] == 5
        assert t["cpu_ms_per_saga"] > 0
        assert t["vs_off"]["cpu_ms_per_saga"] > 0
    tracing = result["tracing"]

    # Off is no tracing at all, as plain is: no SDK provider anywhere, no span, no stored context.
    for name in ("http plain", "http trace=off"):
        off = tracing[name]
        assert not off["sdk_provider"]
        assert not off["engine_traced"]
        assert off["stored"]["sagas"] > 0
        assert off["stored"]["with_traceparent"] == 0
        assert off["spans_ended"] == off["spans_received"] == 0
    assert tracing["http trace=off"]["global_provider"] != "TracerProvider"

    # On, every saga stores a context and every span ended reached the receiver, seven per sampled saga.
    full, tenth = tracing["http trace=1.0"], tracing["http trace=0.1"]
    assert full["stored"]["sampled"] == full["stored"]["sagas"] > 0
    for on in (full, tenth):
        assert on["sdk_provider"]
        assert on["engine_traced"]
        assert on["stored"]["with_traceparent"] == on["stored"]["sagas"]
        assert on["spans_dropped"] == 0
        assert on["spans_received"] == on["spans_ended"] == 7 * on["stored"]["sampled"]
    kinds = {name.split(" ")[0] for name in full["by_name"]}
    assert kinds == {"saga.start", "saga.step", "POST"}
    assert result["rejected"] == 0

    bound = result["bound"]
    assert bound["spans_received"] > 0
    assert bound["spans_received"] + bound["spans_dropped"] == bound["spans_ended"]
    assert bound["ratio"] > 0

    printed = tracing_overhead.render(result)
    assert "off installs no SDK provider" in printed
    assert "exporter bound" in printed


@pytest.mark.slow
@pytest.mark.timeout(240)  # two deployments of four to five processes each, started on a shared machine
@pytest.mark.usefixtures("keep_logging")
def test_quick_scaleout_benchmark_reports_every_figure(tmp_path: Path) -> None:
    out, data = tmp_path / "out", tmp_path / "data"

    assert main(["--quick", "--only", "scaleout", "--out", str(out), "--data-dir", str(data)]) == 0

    [path] = out.glob("scaleout-*.json")
    result = json.loads(path.read_text())
    assert result["mode"] == "quick"
    assert list(data.iterdir()) == []  # every deployment's and the bound server's directories are removed
    assert [level["engines"] for level in result["levels"]] == [1, 2]
    for level in result["levels"]:
        assert level["sagas"] > 0
        assert set(level["endings"]) == {"SagaCompleted"}
        assert 0 < level["latency_p50_ms"] <= level["latency_p99_ms"]
        # CPU was read from every process that does a saga's work (Redis may idle below a clock tick).
        cpu = level["cpu_ms_per_saga"]
        for part in ("engines", "api", "store", "rig"):
            assert cpu[part] > 0, (level["engines"], part)
        assert cpu["total"] == pytest.approx(sum(v for k, v in cpu.items() if k != "total"))
        assert level["machine_bound_sagas_per_s"] > 0
        assert level["store_bound_ratio"] > 0
        # Every engine process took its share of the sagas (the group's pinned consumers).
        assert len(level["step_calls_by_engine"]) == level["engines"]
        assert all(calls > 0 for calls in level["step_calls_by_engine"])
    bound = result["bound"]
    assert bound["writers"] == result["config"]["inflight"] == 8
    assert bound["sagas_per_s"] > 0
    assert bound["store_cores_used"] > 0

    printed = scaleout.render(result)
    assert "store bound" in printed
    assert "machine bound" in printed
