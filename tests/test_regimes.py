"""Data regimes (issue 26): a speaker subset and an on-the-fly corruption (synthetic RIR, white noise at an SNR),
seeded per clip, accepted by the training commands, recorded in the bundle, and used by the judge and by the
classifier-accuracy report."""
import json

import numpy as np
import pytest
import torch

from engine.audio.corruption import corrupt, room_impulse_response
from engine.audio.datasets import list_items, load_features
from engine.cli import main
from engine.storage.config import DataRegime, FeatureConfig, from_dict, to_dict

NOISY = DataRegime(noise=True, snr_db=5.0, rt60_s=0.3, seed=1)


def test_a_speaker_subset_keeps_only_those_speakers_and_names_unknown_ones(fsdd_root):
    items = list_items(fsdd_root, "train", (7,), ("george", "theo"))
    assert {it.speaker for it in items} == {"george", "theo"}
    assert len(items) == sum(it.speaker in ("george", "theo") for it in list_items(fsdd_root, "train", (7,)))
    assert len(list_items(fsdd_root, "test", None, ("jackson",))) == 10 * 5  # the subset holds the whole test split
    with pytest.raises(ValueError, match=r"unknown speaker\(s\) \['bob'\].*george"):
        list_items(fsdd_root, "train", None, ("bob",))


def test_a_speaker_subset_of_the_whole_dataset_keeps_all_its_clips(full_fsdd):
    assert len(list_items(full_fsdd, "train", (7,), ("george", "theo"))) == 2 * 45


def test_corruption_is_seeded_per_clip_and_reaches_its_snr():
    rng = np.random.default_rng(0)
    x = (np.sin(np.arange(8000) / 8.0) * np.hanning(8000)).astype(np.float32) * 0.5 + 0.01 * rng.standard_normal(8000)
    a, b = corrupt(x, 8000, NOISY, "7_george_5.wav"), corrupt(x, 8000, NOISY, "7_george_5.wav")
    assert np.array_equal(a, b) and a.dtype == np.float32 and len(a) == len(x)
    assert not np.allclose(a, corrupt(x, 8000, NOISY, "7_george_6.wav"))
    assert not np.allclose(a, corrupt(x, 8000, DataRegime(noise=True, snr_db=5.0, rt60_s=0.3, seed=2), "7_george_5.wav"))
    assert corrupt(x, 8000, DataRegime(), "k") is x  # nothing to corrupt: the clip itself
    reverberant = corrupt(x, 8000, DataRegime(rt60_s=0.3, seed=1), "7_george_5.wav")
    noise = a - reverberant  # the same RIR draw comes first, then the noise
    snr = 10 * np.log10(np.mean(reverberant.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
    assert abs(snr - 5.0) < 0.3


def test_the_room_impulse_response_decays_by_60_db_over_rt60():
    h = room_impulse_response(0.4, 16000, np.random.default_rng(0))
    assert h[0] > 0.5 and abs(np.sum(h ** 2) - 1) < 1e-9
    tail = h[1:]
    early, late = tail[:800] ** 2, tail[-800:] ** 2  # 50 ms windows after the direct path and before RT60
    assert 10 * np.log10(early.mean() / late.mean()) > 45


def test_the_regime_changes_the_features_and_round_trips_through_the_config(fsdd_root):
    items = list_items(fsdd_root, "test", (3,), ("nicolas",))[:3]
    clean = load_features(items, FeatureConfig())
    noisy = load_features(items, FeatureConfig(), regime=NOISY)
    assert torch.equal(clean.mels, load_features(items, FeatureConfig(), regime=DataRegime()).mels)
    assert (noisy.mels - clean.mels).abs().mean() > 0.1
    assert from_dict(DataRegime, json.loads(json.dumps(to_dict(NOISY)))) == NOISY
    for bad in ({"rt60_s": 5.0}, {"speakers": [1]}, {"noise": "yes"}, {"snr_db": float("nan")}, {"seed": -1}):
        with pytest.raises(ValueError):
            from_dict(DataRegime, bad)


def test_training_commands_take_and_record_the_regime(fsdd_root, tmp_path):
    out = tmp_path / "ck"
    data = ["--data", str(fsdd_root)]
    regime = ["--speakers", "george,jackson,nicolas", "--digit", "1,7", "--widths", "8,8,16,16"]
    assert main(["train-classifier", "--out", str(out), "--seconds", "60", "--max-steps", "40", *regime, *data]) == 0
    shifted = ["--speakers", "theo,yweweler", "--noise-snr-db", "10", "--rt60", "0.2"]
    assert main(["train-score", "--checkpoint", str(out), "--seconds", "60", "--max-steps", "20", "--widths", "8,8,16,16",
                 "--heldout-clips", "8", *shifted, *data]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["regime"]["speakers"] == ["george", "jackson", "nicolas"]
    score = cfg["training"]["score_subnet"]["regime"]
    assert score["speakers"] == ["theo", "yweweler"] and score["noise"] and score["snr_db"] == 10 and score["rt60_s"] == 0.2
    assert main(["evaluate", "--checkpoint", str(out), "--classifier-accuracy", "--json", str(tmp_path / "acc.json"),
                 *shifted, *data]) == 0
    report = json.loads((tmp_path / "acc.json").read_text())
    assert set(report["accuracy_by_sigma"]) == {"0", "0.5", "1", "2", "5"} and "theo,yweweler" in report["regime"]
    assert all(0 <= v <= 1 for v in report["accuracy_by_sigma"].values())
    assert main(["train-score", "--checkpoint", str(out), "--seconds", "1", "--speakers", "bob", *data]) == 2


def test_adapting_the_classifier_trains_only_its_normalisation_into_a_new_bundle(tiny_with_baselines, fsdd_root,
                                                                                  tmp_path):
    from safetensors.torch import load_file

    from engine.bundle import load_bundle
    from engine.errors import CheckpointError

    src, out = tiny_with_baselines, tmp_path / "adapted"
    data = ["--data", str(fsdd_root)]
    shifted = ["--speakers", "theo", "--noise-snr-db", "5", "--rt60", "0.3"]
    assert main(["adapt-classifier", "--checkpoint", str(src), "--out", str(out), "--seconds", "60", "--max-steps", "30",
                 *shifted, *data]) == 0
    before, after = load_file(str(src / "classifier.safetensors")), load_file(str(out / "classifier.safetensors"))
    norm_keys = {k for k in before if ".norm" in k}
    assert norm_keys and set(before) == set(after)
    assert all(torch.equal(before[k], after[k]) for k in before if k not in norm_keys)  # the backbone is untouched
    assert any(not torch.equal(before[k], after[k]) for k in norm_keys)
    cfg = json.loads((out / "config.json").read_text())
    record = cfg["training"]["classifier_adaptation"]
    assert record["regime"]["speakers"] == ["theo"] and record["regime"]["snr_db"] == 5 and record["steps"] > 0
    assert record["trained_parameters"] == sum(before[k].numel() for k in norm_keys)
    # the U-Net reads no taps and comes along (guided by the adapted classifier); ScoreSubnet is left behind
    assert load_bundle(out, model="two-model").score_net is not None
    assert "score_subnet_config" not in cfg and "score_subnet.safetensors" not in cfg["files"]
    with pytest.raises(CheckpointError):
        load_bundle(out, model="tapdiff")
    assert json.loads((src / "config.json").read_text())["files"] != cfg["files"]  # the source is left as it was
    assert load_file(str(src / "classifier.safetensors")).keys() == before.keys()
    # rerunning the finished adaptation changes nothing (what was trained into the bundle since stays); asking for
    # longer, the same folder twice, or a bundle that is not an adaptation, is refused
    config_before = (out / "config.json").read_bytes()
    assert main(["adapt-classifier", "--checkpoint", str(src), "--out", str(out), "--seconds", "60", "--max-steps", "30",
                 *shifted, *data]) == 0
    assert (out / "config.json").read_bytes() == config_before
    assert main(["adapt-classifier", "--checkpoint", str(src), "--out", str(out), "--seconds", "60", "--max-steps", "31",
                 *shifted, *data]) == 2
    assert main(["adapt-classifier", "--checkpoint", str(src), "--out", str(src), *shifted, *data]) == 2
    assert main(["adapt-classifier", "--checkpoint", str(out), "--out", str(src), *shifted, *data]) == 2
