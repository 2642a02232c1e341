"""tapdiff bench on a tiny bundle: the JSON schema, interleaved rounds, ratios, markdown, plot, skips."""
import json

import pytest

from engine.cli import main
from engine.evaluation.bench import scaling


def test_scaling_finds_where_throughput_stops_improving():
    rows = [{"batch": b, "clips_per_s": {"m": v}} for b, v in ((1, 2.0), (4, 6.0), (16, 9.7), (64, 10.0))]
    assert scaling(rows, ["m"]) == {"m": {"clips_per_s": {1: 2.0, 4: 6.0, 16: 9.7, 64: 10.0}, "saturates_at_batch": 16}}


@pytest.mark.slow  # the quick tier (-m "not slow") leaves it out
def test_bench_command_writes_json_markdown_and_plot_and_reports_skips(tiny_with_baselines, tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--checkpoint", str(tiny_with_baselines), "--models", "tapdiff,two-model",
                 "--backends", "torch,onnxruntime,tensorrt", "--batch", "1,2", "--guidance", "3", "--repeats", "2",
                 "--gen-repeats", "1", "--nfe", "2", "--sampler", "dpmpp_2m", "--artifacts", str(tmp_path / "art"),
                 "--out", str(out)]) == 0
    r = json.loads((out / "bench.json").read_text())
    assert {"command", "commit", "machine", "torch_threads", "versions"} <= set(r)
    assert set(r["systems"]) == {"tapdiff/torch", "tapdiff/onnxruntime", "two-model/torch", "two-model/onnxruntime"}
    assert "needs an NVIDIA GPU" in r["skipped"]["tapdiff/tensorrt"]  # what cannot run here says why
    for row in r["score_eval"]:
        assert all(len(v) == 2 for v in row["times_s"].values())
        assert set(row["ratios"]) == {"tapdiff/torch / two-model/torch", "tapdiff/onnxruntime / two-model/onnxruntime",
                                      "tapdiff/onnxruntime / tapdiff/torch", "two-model/onnxruntime / two-model/torch"}
        assert all(v > 0 for v in row["peak_mb"].values()) or row["batch"] == 1
        # both memory figures per system: live activations (planned) and the process peak (measured)
        assert set(row["planned_mib"]) == set(row["measured_mib"]) == set(row["latency_s"])
        assert all(v > 0 for v in row["planned_mib"].values()) and all(v > 0 for v in row["measured_mib"].values())
        assert row["memory"]["tapdiff/onnxruntime"]["planned_source"] == "exported ONNX graph, liveness"
    gen = r["generate"]
    assert [g["batch"] for g in gen] == [1, 2] and all(v > 0 for v in gen[1]["rtf"].values())
    assert set(r["parity"]) == {"tapdiff/onnxruntime", "two-model/onnxruntime"}
    assert all(p["max_rel_diff"] < 1e-3 for p in r["parity"].values())
    md = (out / "bench.md").read_text()
    assert md.startswith("Command: `tapdiff bench") and "| tapdiff/onnxruntime / tapdiff/torch |" in md
    assert "live activations (planned) MiB | process peak over pre-evaluation state (measured) MiB" in md
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_a_small_bench_writes_its_report_with_the_reference_rate_before_and_after(tiny_checkpoint, tmp_path):
    """The quick tier's bench: one system, no memory probes; the slow test above runs every system."""
    out = tmp_path / "bench"
    assert main(["bench", "--checkpoint", str(tiny_checkpoint), "--models", "tapdiff", "--backends", "torch",
                 "--batch", "1", "--guidance", "3", "--repeats", "3", "--gen-repeats", "1", "--nfe", "2",
                 "--sampler", "dpmpp_2m", "--no-memory", "--out", str(out)]) == 0
    r = json.loads((out / "bench.json").read_text())
    assert set(r["systems"]) == {"tapdiff/torch"} and len(r["score_eval"][0]["times_s"]["tapdiff/torch"]) == 3
    rates = r["matmul_gmac_per_s"]
    assert rates["before"] > 0 and rates["after"] > 0 and isinstance(r["disturbed"], list)
    assert (out / "bench.md").read_text().startswith("Command: `tapdiff bench")
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_refuses_a_run_with_nothing_to_measure(tiny_checkpoint, tmp_path, capsys):
    import shutil

    ck = tmp_path / "no_unet"
    shutil.copytree(tiny_checkpoint, ck, ignore=shutil.ignore_patterns("state"))
    cfg = json.loads((ck / "config.json").read_text())
    cfg.pop("unet_config", None)
    (ck / "config.json").write_text(json.dumps(cfg))
    assert main(["bench", "--checkpoint", str(ck), "--models", "two-model", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "nothing to benchmark" in err and "no two-model score network" in err
    assert not (tmp_path / "b").exists()


def test_targets_come_from_the_benchmarks_file_and_are_judged_on_what_the_run_measured(tmp_path):
    from pathlib import Path

    from engine.evaluation.bench import load_targets, missed_by, targets

    spec = load_targets(Path(__file__).resolve().parents[1] / "benchmarks" / "targets.json")
    result = {"generate": [{"batch": 16, "seconds": {"tapdiff/torch": {"median": 12.0}}}],
              "score_eval": [{"batch": 16, "guidance": 3.0, "ratios": {"tapdiff/torch / two-model/torch": {"median": 0.6}},
                              "planned_mib": {"tapdiff/torch": 40.0, "two-model/torch": 100.0}}]}
    got = {what: (value, met) for what, value, _, met, _ in targets(result, spec)}
    assert got == {"tapdiff guided generate, 16 clips end to end (s)": (12.0, False),
                   "guided score evaluation latency at batch 16, tapdiff / two-model (torch)": (0.6, True),
                   "guided memory at batch 16, live activations (planned), tapdiff / two-model (torch)": (0.4, True)}
    bounds = {what: bound for what, _, _, met, bound in targets(result, spec) if not met}
    assert bounds["tapdiff guided generate, 16 clips end to end (s)"] == ""  # this one names no bound
    assert missed_by(12.0, 11.5) == "+0.50 (4% over)" and missed_by(0.6, 0.7) == ""
    assert all("benchmarks/results/" in t["bound"] for t in spec if t.get("bound"))  # a bound names its evidence
    bad = tmp_path / "targets.json"
    bad.write_text('{"targets": [{"what": "x", "metric": "speed", "at_most": 1}]}')
    with pytest.raises(ValueError, match="targets.json"):
        load_targets(bad)
