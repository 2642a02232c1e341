"""Learning curves and cost at equal quality (benchmarks/learning_curve.py, issue 14)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from learning_curve import earlier_points, equal_quality, first_reaching, render  # noqa: E402


def _pt(seconds, step, fd, rec=0.9):
    return {"seconds": seconds, "step": step, "fd": fd, "recognised": rec, "snapshot": f"{seconds:06d}s"}


@pytest.mark.core
def test_equal_quality_takes_the_first_point_at_or_below_each_level():
    curves = {"tapdiff": [_pt(3000, 7000, 66.0), _pt(4000, 9000, 64.0), _pt(5000, 11000, 59.0)],
              "two-model": [_pt(3000, 4000, 104.0), _pt(6000, 8000, 79.0), {"seconds": 9000, "step": 12000}]}
    assert first_reaching(curves["tapdiff"], 65.0)["seconds"] == 4000
    assert first_reaching(curves["two-model"], 65.0) is None  # an unjudged point never counts
    rows = {r["fd_level"]: r for r in equal_quality(curves, {}, "two-model")}
    assert rows[80.0]["tapdiff"]["seconds"] == 3000 and rows[80.0]["two-model"]["seconds"] == 6000
    assert rows[80.0]["tapdiff / two-model training seconds"] == 0.5
    assert rows[60.0]["two-model"] is None and "tapdiff / two-model training seconds" not in rows[60.0]
    assert "tapdiff / two-model training seconds" not in rows[150.0]  # both only known "by the first point"
    text = render({"curves": curves, "step_cost": {}, "equal_quality": list(rows.values())})
    assert "| 80 | ≤ 3000 (7000) | 0.90 | 6000 (8000) | 0.90 | ≤ 0.50 |" in text
    assert "| 65 | 4000 (9000) | 0.90 | not reached | – | – |" in text
    assert "| 150 | ≤ 3000 (7000) | 0.90 | ≤ 3000 (4000) | 0.90 | – |" in text
    assert "| 9000 | 12000 | 1.33 | ? | – | – |" in text  # steps/s since the last point; unjudged point shown


def test_curves_of_a_continued_run_end_to_end(tiny_with_baselines, fsdd_root, tmp_path):
    from engine.cli import main

    ck = tmp_path / "ck"
    shutil.copytree(tiny_with_baselines, ck, ignore=shutil.ignore_patterns("state"))
    for model in ("tapdiff", "two-model"):
        assert main(["train-score", "--checkpoint", str(ck), "--model", model, "--continue", "--seconds", "6",
                     "--snapshot-every", "1", "--heldout-clips", "4", "--data", str(fsdd_root)]) == 0
    out, js, png = tmp_path / "c.md", tmp_path / "c.json", tmp_path / "c.png"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "learning_curve.py"), "--checkpoint", str(ck), "--data",
           str(fsdd_root), "-n", "1", "--cache", str(tmp_path / "cache.json"), "--out", str(out), "--json", str(js),
           "--plot", str(png)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    result = json.loads(js.read_text())
    for model in ("tapdiff", "two-model"):
        steps = [p["step"] for p in result["curves"][model]]
        assert len(steps) == len(set(steps))  # the continued run's opening point is the original's last, once
        judged = [p for p in result["curves"][model] if "fd" in p]
        assert len(judged) >= 2 and all(p["fd"] > 0 and 0 <= p["recognised"] <= 1 for p in judged)
        assert all(p["heldout"]["all"] > 0 for p in judged)
        assert judged[0]["snapshot"] < judged[-1]["snapshot"]
    assert out.read_text().startswith("Command: `python benchmarks/learning_curve.py")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = json.loads((tmp_path / "cache.json").read_text())
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)  # judged points come from the cache
    assert json.loads((tmp_path / "cache.json").read_text()) == before
    assert json.loads(js.read_text())["curves"] == result["curves"]
    # --keep-earlier takes the earlier judgement of a snapshot that is still here instead of judging it again.
    marked = {**result, "code_version": "earlier-code"}
    marked["curves"] = {m: [{**p, "fd": p["fd"] + 1000} if "fd" in p else p for p in pts]
                        for m, pts in result["curves"].items()}
    (tmp_path / "marked.json").write_text(json.dumps(marked))
    kept_md, kept_js = tmp_path / "kept.md", tmp_path / "kept.json"
    subprocess.run(cmd[:-8] + ["--out", str(kept_md), "--json", str(kept_js), "--earlier", str(tmp_path / "marked.json"),
                               "--keep-earlier"], check=True, capture_output=True, cwd=ROOT)
    for model in ("tapdiff", "two-model"):
        pts = [p for p in json.loads(kept_js.read_text())["curves"][model] if "fd" in p]
        assert [p["fd"] for p in pts] == [p["fd"] for p in marked["curves"][model] if "fd" in p]
        assert all(p["judged_earlier"] and p["judged_at"]["code_version"] == "earlier-code" for p in pts)
    assert "judged in an earlier run (commit" in kept_md.read_text() and "earlier-code" in kept_md.read_text()
    # A later session without the snapshots keeps the judged points from the earlier results.
    shutil.rmtree(ck / "state")
    later = tmp_path / "later.json"
    subprocess.run(cmd[:-6] + ["--json", str(later), "--earlier", str(js)], check=True, capture_output=True, cwd=ROOT)
    for model in ("tapdiff", "two-model"):
        kept = {p["step"]: p["fd"] for p in json.loads(later.read_text())["curves"][model] if "fd" in p}
        assert kept == {p["step"]: p["fd"] for p in result["curves"][model] if "fd" in p}


@pytest.mark.core
def test_earlier_points_only_from_results_judged_the_same_way(tmp_path):
    pts = {"tapdiff": [_pt(3000, 7000, 66.0), {"seconds": 600, "step": 1381, "snapshot": "000600s"}]}
    same, other = tmp_path / "same.json", tmp_path / "other.json"
    same.write_text(json.dumps({"settings": {"n": 10, "guidance": 3.0, "seed": 0}, "commit": "abc",
                                "code_version": "v1", "curves": pts}))
    other.write_text(json.dumps({"settings": {"n": 30, "guidance": 3.0, "seed": 0}, "curves": pts}))
    got = earlier_points([str(same), str(other)], {"n": 10, "guidance": 3.0, "seed": 0})
    assert set(got) == {("tapdiff", 7000)}  # unjudged points are not taken
    assert got[("tapdiff", 7000)]["fd"] == 66.0 and got[("tapdiff", 7000)]["snapshot"] == "003000s"
    assert got[("tapdiff", 7000)]["judged_at"] == {"commit": "abc", "code_version": "v1"}
    assert earlier_points([str(other)], {"n": 10, "guidance": 3.0, "seed": 0}) == {}  # -n 30 is another measure
