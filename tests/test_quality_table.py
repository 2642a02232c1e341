"""The side-by-side table CLI (benchmarks/quality_table.py) and the peak-memory figure it takes from the process probe."""
import json
import subprocess
import sys
from pathlib import Path

from engine.evaluation.memory import MIB
from engine.evaluation.memory.process_probe import Runtime, measured_memory

ROOT = Path(__file__).resolve().parents[1]


def test_step_peak_memory_grows_with_batch(tiny_checkpoint):
    def warmed_peak(batch):  # the table's figure: the probe's peak of evaluations 2-4 over the warmed process
        return measured_memory(tiny_checkpoint, "tapdiff", Runtime("torch"), batch, 3.0, evals=4)[
            "steady_peak_increase_bytes"] / MIB

    one, many = warmed_peak(1), warmed_peak(16)
    assert 0 <= one < many  # the warm-up's buffers were returned, so batch 16's activations show


def test_quality_table_lists_every_system_and_resumes_from_its_cache(tiny_with_baselines, fsdd_root, tmp_path):
    out, cache = tmp_path / "quality.md", tmp_path / "rows.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality_table.py"), "--checkpoint", str(tiny_with_baselines),
           "--data", str(fsdd_root), "--clips", "4", "--sampler", "dpmpp_2m", "--nfe", "2", "--cache", str(cache), "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    rows = [line for line in out.read_text().splitlines() if line.startswith("| tiny")]
    assert [r.split("|")[2].strip() for r in rows] == ["tapdiff", "two-model", "ablation"]
    assert all("(1,7)" in r for r in rows)  # the regime's digits, from the score models' training labels
    first = json.loads(cache.read_text())
    assert len(first) == 3 and all(v["clips"] == 4 and 0 <= v["3.0"]["recognised"] <= 1 for v in first.values())
    # a second run takes the quality numbers from the cache (same weights, same settings) instead of sampling
    key = next(k for k in first if json.loads(k)[2] == "two-model")  # [code version, checkpoint, model, ...]
    first[key]["3.0"]["recognised"] = 0.123
    cache.write_text(json.dumps(first))
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    again = [line for line in out.read_text().splitlines() if line.startswith("| tiny")]
    assert again[1].split("|")[3].strip() == "0.12"
    assert [again[i].split("|")[3:8] for i in (0, 2)] == [rows[i].split("|")[3:8] for i in (0, 2)]
