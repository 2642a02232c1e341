"""The solver sweep that chooses a checkpoint's default (benchmarks/choose_sampling.py)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from choose_sampling import choose  # noqa: E402


def _row(solver, nfe, rec, fd, model="tapdiff"):
    return {"model": model, "solver": solver, "nfe": nfe, "nfe_budget": nfe, "fade": 0.0, "recognised": rec, "fd": fd}


@pytest.mark.core
def test_choice_is_the_fewest_evaluations_within_the_target():
    rows = [_row("euler_maruyama", 100, 0.96, 60.0), _row("a", 10, 0.99, 70.0),  # FD 1.17x: out
            _row("b", 15, 0.93, 50.0),  # recognised 0.03 below: out
            _row("c", 20, 0.95, 65.0), _row("d", 20, 0.97, 62.0), _row("e", 30, 1.0, 40.0),
            _row("f", 10, 1.0, 10.0, model="two-model")]
    ref, chosen = choose(rows, "tapdiff", tolerance=0.02, fd_ratio=1.1)
    assert ref["solver"] == "euler_maruyama" and (chosen["solver"], chosen["nfe"]) == ("d", 20)
    assert choose(rows[1:], "tapdiff", 0.02, 1.1) == (None, None)  # no reference measured: no choice


def test_sweep_writes_table_json_plot_and_the_choice(tiny_checkpoint, fsdd_root, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ck, ignore=shutil.ignore_patterns("state"))
    out, js, png = tmp_path / "choice.md", tmp_path / "choice.json", tmp_path / "choice.png"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "choose_sampling.py"), "--checkpoint", str(ck), "--data",
           str(fsdd_root), "--models", "tapdiff", "--solvers", "euler_maruyama,dpmpp_2m", "--nfe", "2,100", "-n", "1",
           "--time-clips", "2", "--out", str(out), "--json", str(js), "--plot", str(png), "--write"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    text = out.read_text()
    assert text.startswith("Command: `python benchmarks/choose_sampling.py") and "Commit: " in text
    assert "| euler_maruyama |" in text and "| dpmpp_2m |" in text and "Chosen: " in text
    points = json.loads(js.read_text())["points"]
    assert len(points) == 4 and all(p["seconds_per_clip"] > 0 for p in points)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = json.loads((ck / "config.json").read_text())["sampling"]
    _, chosen = choose(points, "tapdiff", tolerance=0.02, fd_ratio=1.1)  # the script's defaults, on its own points
    assert (written["sampler"], written["steps"], written["guidance_fade_sigma"]) == \
        (chosen["solver"], chosen["steps"], chosen["fade"])
    assert (written["recognised"], written["fd"]) == (chosen["recognised"], chosen["fd"])
    assert written["chosen_by"].startswith("python benchmarks/choose_sampling.py")
