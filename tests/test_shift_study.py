"""The distribution-shift study's driver (benchmarks/shift_study.py): which bundles it trains with which data, in
which order, resuming from its markers, stopping at a failure; and the table it renders from judged rows."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import shift_study  # noqa: E402


def test_every_regime_trains_its_classifier_and_score_networks_on_the_right_data(tmp_path):
    steps = {s.name: s for s in shift_study.steps(tmp_path)}
    flags = lambda name: steps[name].argv[3:]  # noqa: E731 - after "python -m engine.cli"
    # speaker shift: the classifier never hears the two speakers its score networks train on
    assert flags("spk_seen/classifier")[-2:] == ["--speakers", "george,jackson,theo"]
    for name in ("spk_seen/tapdiff", "spk_seen/two-model", "spk_new/tapdiff", "spk_seen_adapted/tapdiff"):
        assert flags(name)[-2:] == ["--speakers", "nicolas,yweweler"] and steps[name].after == [name.split("/")[0] + "/classifier"]
    assert flags("spk_new/classifier")[-2:] == ["--speakers", "nicolas,yweweler"]  # its control
    # condition shift: a clean classifier, noisy reverberant score data; the control's classifier hears that data
    assert "--rt60" not in flags("clean/classifier") and "--speakers" not in flags("clean/classifier")
    for name in ("clean/tapdiff", "clean/two-model", "noisy/classifier", "noisy/tapdiff", "clean_adapted/tapdiff"):
        assert flags(name)[-4:] == ["--rt60", "0.4", "--noise-snr-db", "10"]
    # adaptation: from the shift's bundle once its U-Net is there (it is carried over, not retrained)
    adapt = steps["clean_adapted/classifier"]
    assert flags("clean_adapted/classifier")[:1] == ["adapt-classifier"] and set(adapt.after) == {
        "clean/classifier", "clean/two-model"}
    assert "clean_adapted/two-model" not in steps and "spk_seen_adapted/two-model" not in steps
    seconds = lambda name: float(flags(name)[flags(name).index("--seconds") + 1])  # noqa: E731
    score = [n for n in steps if not n.endswith("/classifier")]
    assert len({seconds(n) for n in score}) == 1  # equal budgets for every score network
    assert len({seconds(n) for n in steps if flags(n)[0] == "train-classifier"}) == 1


def test_the_driver_runs_in_dependency_order_resumes_and_stops_at_a_failure(tmp_path):
    log = tmp_path / "order.txt"
    echo = lambda name: [sys.executable, "-c", f"open({str(log)!r}, 'a').write({name!r} + '\\n')"]  # noqa: E731
    Step = shift_study.Step
    todo = [Step("b/two", echo("b/two"), after=["a/one"]), Step("a/one", echo("a/one")),
            Step("c/three", echo("c/three"), after=["b/two"])]
    assert shift_study.run_steps(todo, tmp_path, 2, tmp_path / "logs") == 0
    assert log.read_text().split() == ["a/one", "b/two", "c/three"]
    assert shift_study.run_steps(todo, tmp_path, 2, tmp_path / "logs") == 0  # finished steps are not run again
    assert log.read_text().split() == ["a/one", "b/two", "c/three"]
    failing = [Step("d/bad", [sys.executable, "-c", "raise SystemExit(3)"]), Step("e/after", echo("e/after"), after=["d/bad"])]
    assert shift_study.run_steps(failing, tmp_path, 2, tmp_path / "logs") == 1
    assert "e/after" not in log.read_text()
    hook_fails = [Step("f/hook", echo("f/hook"), on_success=lambda: 1 / 0)]
    assert shift_study.run_steps(hook_fails, tmp_path, 1, tmp_path / "logs") == 1
    assert not (tmp_path / "done" / "f__hook.json").exists()


def test_the_table_shows_each_regime_with_its_seed_spread_and_tapdiffs_lead(tmp_path):
    def row(regime, system, rec, fd):
        return {"regime": regime, "shift": "speaker", "role": "shift", "system": system, "classifier": "x",
                "score_data": "y", "per_seed": {0: {"recognised": rec[0], "fd": fd[0]}, 1: {"recognised": rec[1], "fd": fd[1]}},
                "fd_floor": 20.0, "real_recognised": 0.9, "classifier_accuracy": {"0": 0.9, "1": 0.8, "5": 0.4},
                "classifier_training": {"seconds": 600, "steps": 900},
                "score_training": {"seconds": 600, "steps": 500, "from": "this bundle"}}
    rows = [row("speaker-shift", "tapdiff", (0.6, 0.5), (100.0, 120.0)),
            row("speaker-shift", "two-model", (0.3, 0.2), (150.0, 130.0))]
    text = shift_study.render(rows, [0, 1], 10, tmp_path)
    assert "| speaker-shift | tapdiff | x | y | 0.550 ± 0.050 | 0.900 | 110.0 ± 10.0 |" in text
    assert "| speaker-shift | +0.300 ± 0.000 | +30.0 ± 20.0 |" in text  # per-seed differences, then their spread
    assert "tapdiff train-classifier" in text and str(tmp_path) in text
