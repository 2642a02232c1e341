"""ScoreSubnet width sweep at equal budget (benchmarks/width_sweep.py, issue 14)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sweep_trains_each_width_on_the_shared_classifier_and_tables_them(tiny_with_baselines, fsdd_root, tmp_path):
    work = tmp_path / "widths"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "width_sweep.py"), "--checkpoint", str(tiny_with_baselines),
           "--widths", "8,8,16,16", "8,16,16,32", "--seconds", "2", "--heldout-clips", "8", "--work", str(work), "--data", str(fsdd_root),
           "-n", "1", "--cache", str(tmp_path / "rows.json"), "--out", str(tmp_path / "w.md"), "--json", str(tmp_path / "w.json")]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    rows = json.loads((tmp_path / "w.json").read_text())["rows"]
    assert [r["widths"] for r in rows] == [[8, 8, 16, 16], [8, 16, 16, 32]]
    assert rows[1]["params"] > rows[0]["params"] and all(r["seconds"] >= 2 and r["steps"] > 0 for r in rows)
    assert all(r["heldout"]["all"] > 0 and r["fd"] > 0 for r in rows)
    # The held-out curve ends at the judged weights' step and loss.
    assert all(r["curve"][-1]["steps"] == r["steps"] and r["curve"][-1]["heldout"] == r["heldout"]["all"] for r in rows)
    base = json.loads((tiny_with_baselines / "config.json").read_text())
    for d in ("8-8-16-16", "8-16-16-32"):
        cfg = json.loads((work / d / "config.json").read_text())
        assert "unet_config" not in cfg and "unet" not in cfg["training"] and "unet.safetensors" not in cfg["files"]
        assert cfg["files"]["classifier.safetensors"] == base["files"]["classifier.safetensors"]
    text = (tmp_path / "w.md").read_text()
    assert text.startswith("Command: `python benchmarks/width_sweep.py") and "| 8,16,16,32 |" in text
    assert f"{rows[0]['heldout']['all']:.4f} at " in text.split("along the way")[1]
    # A finished width is not trained again: its weights stay as they are.
    before = (work / "8-8-16-16" / "score_subnet.safetensors").read_bytes()
    subprocess.run(cmd[:-6] + ["--train-only"], check=True, capture_output=True, cwd=ROOT)
    assert (work / "8-8-16-16" / "score_subnet.safetensors").read_bytes() == before
    # A judged width is read back from the cache, not judged again: a marked FD shows up in the table.
    cache = json.loads((tmp_path / "rows.json").read_text())
    assert len(cache) == 2
    key = next(k for k, v in cache.items() if v["widths"] == [8, 16, 16, 32])
    cache[key]["fd"] = 12345.6
    (tmp_path / "rows.json").write_text(json.dumps(cache))
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    assert "| 12345.6 |" in (tmp_path / "w.md").read_text()
    (tmp_path / "rows.json").write_text("{not json")
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "--cache" in r.stderr and "not valid JSON" in r.stderr


def test_bad_widths_are_refused_by_name(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "width_sweep.py"), "--widths", "8,x"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "comma-separated integers" in r.stderr
