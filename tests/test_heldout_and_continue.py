"""Held-out DSM loss per sigma band, and `train-score --continue` (issue 14's longer runs)."""
import dataclasses
import json
import shutil

import pytest
import torch

from engine.audio.datasets import Normaliser
from engine.cli import main
from engine.diffusion.score_model import build_score_model
from engine.diffusion.taps import TapExtractor
from engine.models.classifier import NoiseConditionedClassifier
from engine.storage.checkpoint import read_config
from engine.training.heldout import BAND_EDGES, HeldOutDSM, band_sigmas
from engine.training.score import dsm_loss
from test_training import SDE, TAPDIFF, TINY_CLF, TINY_SUB, tiny_data


def _model_and_x0():
    data = tiny_data()
    x0 = Normaliser.fit(data.mels).normalise(data.mels)[:, None]
    tx = TapExtractor(NoiseConditionedClassifier(TINY_CLF).eval(), SDE)
    return build_score_model(tx, TAPDIFF.build(TINY_SUB, tx.tap_channels, (80, 72))), x0


def test_bands_cover_the_sde_range_with_levels_inside_each_band():
    bands = band_sigmas(SDE, per_band=3)
    assert list(bands) == ["0.005-0.1", "0.1-1", "1-10", "10-40"]  # edges clipped to sigma_min/max
    for name, sigmas in bands.items():
        lo, hi = map(float, name.split("-"))
        assert len(sigmas) == 3 and all(lo < s < hi for s in sigmas) and sigmas == sorted(sigmas)
    assert BAND_EDGES[0] < SDE.sigma_min


def test_heldout_loss_is_the_dsm_loss_at_fixed_levels_and_repeatable():
    model, x0 = _model_and_x0()
    held = HeldOutDSM(x0, SDE, seed=3, batch_size=3, per_band=1)
    first, again = held(model), held(model)
    assert first == again  # same noise every call
    assert first["all"] == pytest.approx(sum(v for k, v in first.items() if k != "all") / 4)
    # Band "1-10" with one level is DSM at that sigma with the noise drawn from seed 3 + 2 (third level).
    sigma = band_sigmas(SDE, 1)["1-10"][0]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        direct = float(dsm_loss(model, x0, torch.full((len(x0),), sigma), noise))
    assert first["1-10"] == pytest.approx(direct, rel=1e-5)
    with pytest.raises(ValueError, match="non-empty"):
        HeldOutDSM(x0[:0], SDE)


def test_continue_counts_on_from_the_shipped_record_and_starts_from_its_weights(tiny_checkpoint, fsdd_root, tmp_path,
                                                                               capsys):
    ck = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ck, ignore=shutil.ignore_patterns("state"))
    before = read_config(ck)["training"]["score_subnet"]
    total = before["seconds"] + 2
    args = ["train-score", "--checkpoint", str(ck), "--continue", "--seconds", str(total), "--heldout-clips", "6",
            "--snapshot-every", "1000", "--data", str(fsdd_root)]
    assert main(args) == 0
    after = read_config(ck)["training"]["score_subnet"]
    assert after["steps"] > before["steps"] and after["seconds"] >= total
    assert after["continues"][-1]["steps"] == before["steps"]
    assert [s["from_step"] for s in after["stretches"]] == [before["steps"]]
    assert after["stretches"][0]["command"].startswith("tapdiff train-score") and "--continue" in after["stretches"][0]["command"]
    first = after["curve"][len(before.get("curve", []))]
    assert first["step"] == before["steps"]  # the shipped point opens the continued curve
    from engine.bundle import load_bundle
    assert set(first["heldout"]) == {*band_sigmas(load_bundle(ck, model=None).sde), "all"}
    assert all(v > 0 for v in first["heldout"].values())
    assert first["threads"] == before["threads"]  # the stretch it ends ran in the earlier run
    assert all(p["threads"] == torch.get_num_threads() for p in after["curve"][len(before.get("curve", [])) + 1:])
    # The opening snapshot holds the shipped weights themselves.
    from safetensors.torch import load_file
    shipped = load_file(str(tiny_checkpoint / "score_subnet.safetensors"))
    opening = load_file(str(ck / "state" / "score_subnet_snapshots" / f"{first['snapshot']}.safetensors"))
    assert all(torch.equal(shipped[k], opening[k]) for k in shipped)
    assert main(["train-score", "--checkpoint", str(ck), "--continue", "--widths", "8,8,16,32",
                 "--data", str(fsdd_root)]) != 0
    assert "keeps the trained network's widths" in capsys.readouterr().err


def test_continue_without_a_trained_network_is_refused(tiny_checkpoint, fsdd_root, tmp_path, capsys):
    ck = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ck, ignore=shutil.ignore_patterns("state"))
    cfg = json.loads((ck / "config.json").read_text())
    cfg["training"].pop("unet", None)
    (ck / "config.json").write_text(json.dumps(cfg))
    assert main(["train-score", "--checkpoint", str(ck), "--model", "two-model", "--continue",
                 "--data", str(fsdd_root)]) != 0
    assert "no trained unet to continue" in capsys.readouterr().err


def test_affordable_clips_fit_the_share_of_the_budget():
    from engine.training.heldout import HELDOUT_MIN_CLIPS, affordable_clips

    # 10 ms per clip and level, 12 levels, 3 points: 0.36 s per clip; 36 s buys 100 clips, 360 s the cap
    assert affordable_clips(0.01, 12, 3, 36.0) == 100
    assert affordable_clips(0.01, 12, 3, 360.0) == 250
    assert affordable_clips(0.01, 12, 3, 360.0, most=40) == 40
    assert affordable_clips(0.01, 12, 3, 0.36 * (HELDOUT_MIN_CLIPS - 1)) == 0
    with pytest.raises(ValueError):
        affordable_clips(0.0, 12, 3, 1.0)


def test_a_short_run_spends_its_budget_training_not_on_the_held_out_loss(tiny_checkpoint, fsdd_root, tmp_path,
                                                                         capsys, monkeypatch):
    """``--seconds 2`` with the default held-out set: the held-out points may take 10% of the budget, so a tiny
    budget evaluates none and says why (it used to evaluate 250 clips at 12 levels at the start and the end, many
    times the budget); a larger one uses as many clips as fit, recorded."""
    import time

    from engine.cli_parser import build_parser
    from engine.training import heldout

    ck = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ck, ignore=shutil.ignore_patterns("state"))
    t0 = time.monotonic()
    assert main(["train-score", "--checkpoint", str(ck), "--seconds", "2", "--widths", "8,8,16,16",
                 "--data", str(fsdd_root)]) == 0
    took = time.monotonic() - t0
    record = read_config(ck)["training"]["score_subnet"]
    assert record["heldout_clips"] == 0 and all("heldout" not in p for p in record["curve"])
    assert "no held-out loss" in capsys.readouterr().err
    assert took < 60, took  # loading and writing included; the held-out loss alone took minutes before
    # with a budget, as many clips as fit (the cost fixed here at 10 ms per clip and level): 10% of 100 s over
    # 2 points at 12 levels is 41 clips
    from engine.bundle import load_bundle
    from engine.diffusion.taps import TapExtractor as Extractor
    from engine.models.registry import score_network_kind
    from engine.training import workflows

    bundle = load_bundle(ck, model=None)
    kind = score_network_kind("tapdiff")
    monkeypatch.setattr(workflows, "seconds_per_clip_level", lambda *a: 0.01)
    run = workflows.ScoreRun(ck, str(fsdd_root), seconds=100, snapshot_every=600)
    held = workflows.held_out_loss(run, bundle, Extractor(bundle.classifier, bundle.sde), kind,
                                   kind.default_config((8, 8, 16, 16)), bundle.labels)
    assert sum(map(len, band_sigmas(bundle.sde).values())) == 12 and len(held.x0) == 41
    asked = workflows.held_out_loss(dataclasses.replace(run, heldout_clips=6), bundle, None, kind, None, bundle.labels)
    assert len(asked.x0) == 6  # an explicit count is taken as asked, without measuring
    assert heldout.HELDOUT_SHARE == 0.1 and heldout.HELDOUT_MAX_CLIPS == 250  # what --heldout-clips' help says
    assert build_parser().parse_args(["train-score", "--checkpoint", "x"]).heldout_clips is None
