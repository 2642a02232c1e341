"""The CLI end to end on a tiny config, and every bad input the engine must name."""
import json
import math

import pytest
import torch

from engine.api import Engine
from engine.audio.datasets import list_items
from engine.audio.wav import read_wav
from engine.storage.checkpoint import CheckpointError
from engine.storage.hashing import file_sha256
from engine.cli import main



def test_cli_trains_generates_and_evaluates(tiny_checkpoint, tmp_path, fsdd_root, capsys):
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    assert cfg["labels"] == [1, 7] and cfg["sde"]["sigma_max"] > 50
    assert cfg["training"]["classifier"]["command"].startswith("tapdiff train-classifier")
    assert len(cfg["data"]["hash"]) == 64
    assert cfg["data"]["train_clips"] == len(list_items(fsdd_root, "train", (1, 7)))  # 450 on the whole FSDD
    assert main(["generate", "--checkpoint", str(tiny_checkpoint), "--digit", "7", "-n", "2", "--steps", "3",
                 "--out", str(tmp_path / "wav"), "--quiet"]) == 0
    wavs = sorted((tmp_path / "wav").glob("*.wav"))
    assert [w.name for w in wavs] == ["7_0.wav", "7_1.wav"]
    x, rate = read_wav(wavs[0])
    assert rate == 16000 and len(x) == 72 * 160 and x.std() > 0
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(fsdd_root), "-n", "2", "--steps", "2",
                 "--guidance", "0", "3", "--json", str(report)]) == 0
    reports = json.loads(report.read_text())["reports"]
    assert [r["guidance"] for r in reports] == [0.0, 3.0]
    # the CLI's numbers are the API's for the same request (a flag dropped on the way would change them)
    from engine.bundle import load_bundle
    from engine.evaluation.quality import QualityJudge, evaluate_quality

    engine = Engine(tiny_checkpoint)
    judge = QualityJudge(load_bundle(tiny_checkpoint, model=None, need_evaluator=True), str(fsdd_root), engine.labels)
    for r in reports:
        want = evaluate_quality(engine, judge, 2, r["guidance"], 0, engine.sampler_spec(steps=2)).to_dict()
        assert (r["recognised"], r["recognised_per_digit"], r["steps"]) == \
            (want["recognised"], {str(k): v for k, v in want["recognised_per_digit"].items()}, want["steps"])
        assert abs(r["fd"] - want["fd"]) < 1e-3 * want["fd"] and r["fd_real_halves"] == want["fd_real_halves"]


def test_evaluate_with_a_wrong_data_folder_says_so_before_exporting_anything(tiny_checkpoint, tmp_path, capsys):
    artifacts = tmp_path / "artifacts"
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "no_such_folder"),
                 "--backend", "onnxruntime", "--artifacts", str(artifacts), "-n", "1"]) == 2
    assert "no_such_folder does not exist" in capsys.readouterr().err
    assert not artifacts.exists() or not any(artifacts.iterdir())  # no graph was exported first


def test_same_seed_same_output_and_different_seed_differs(tiny_checkpoint):
    engine = Engine(tiny_checkpoint)
    a = engine.generate(7, n=2, steps=3, seed=3)
    b = engine.generate(7, n=2, steps=3, seed=3)
    c = engine.generate(7, n=2, steps=3, seed=4)
    assert torch.equal(a.mels, b.mels) and torch.equal(a.waves, b.waves)
    assert not torch.allclose(a.mels, c.mels)


@pytest.mark.parametrize("kwargs,match", [
    ({"labels": 3}, "unknown digit 3"),
    ({"labels": 12}, "unknown digit 12"),
    ({"labels": [7], "n": 0}, "n must be"),
    ({"labels": [7], "steps": 0}, "steps must be"),
    ({"labels": [7], "guidance": math.nan}, "guidance must be"),
    ({"labels": [7], "guidance": -1.0}, "guidance must be"),
    ({"labels": [7], "guidance": float("inf")}, "guidance must be"),
    ({"labels": [7], "guidance": "3"}, "guidance must be"),
    ({"labels": [7], "seed": 1.5}, "seed must be"),
    ({"labels": [7], "seed": -1}, "seed must be"),
    ({"labels": [7], "sampler": "ddim"}, "unknown sampler"),
    ({"labels": [7], "steps": 3, "nfe": 3}, "steps or nfe"),
    ({"labels": [7], "nfe": 0}, "nfe must be"),
    ({"labels": [], "n": 1}, "digit is an empty list"),
])
def test_bad_generation_requests_are_named(tiny_checkpoint, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Engine(tiny_checkpoint).generate(**kwargs)


def test_cli_reports_bad_input_without_traceback(tiny_checkpoint, tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tiny_checkpoint), "--digit", "3", "--out", str(tmp_path)]) == 2
    assert "unknown digit 3" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(tmp_path / "nope"), "--digit", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def copy_checkpoint(src, dst):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("state"))
    return dst


def test_missing_and_corrupt_checkpoints_are_named(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Engine(tmp_path / "missing")
    bad_json = copy_checkpoint(tiny_checkpoint, tmp_path / "json")
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        Engine(bad_json)
    flipped = copy_checkpoint(tiny_checkpoint, tmp_path / "flip")
    data = bytearray((flipped / "score_subnet.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (flipped / "score_subnet.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="score_subnet.safetensors is corrupt"):
        Engine(flipped)
    truncated = copy_checkpoint(tiny_checkpoint, tmp_path / "trunc")
    cfg = json.loads((truncated / "config.json").read_text())
    (truncated / "classifier.safetensors").write_bytes(b"\x00" * 20)
    cfg["files"]["classifier.safetensors"] = file_sha256(truncated / "classifier.safetensors")  # the reader must
    (truncated / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="classifier.safetensors is not a readable safetensors"):
        Engine(truncated)
    other = copy_checkpoint(tiny_checkpoint, tmp_path / "other")
    cfg = json.loads((other / "config.json").read_text())
    cfg["classifier"]["widths"] = [8, 8, 16, 32]
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not fit NoiseConditionedClassifier"):
        Engine(other)


def test_commands_adding_to_one_bundle_keep_each_others_entries(tiny_checkpoint, tmp_path):
    from engine.storage.checkpoint import read_config, update_config

    ck = copy_checkpoint(tiny_checkpoint, tmp_path / "merge")
    stale = read_config(ck)  # what a long-running command read at its start
    update_config(ck, {"evaluator": {"arch": {"n_mels": 80}, "x": 1}}, files={"evaluator.safetensors": "a" * 64})
    update_config(ck, {"unet_config": {"widths": [8]}}, training={"unet": {"steps": 1}}, files={"unet.safetensors": "b" * 64})
    now = read_config(ck)
    assert now["evaluator"] == {"arch": {"n_mels": 80}, "x": 1} and now["unet_config"] == {"widths": [8]}
    assert set(stale["files"]) | {"evaluator.safetensors", "unet.safetensors"} == set(now["files"])
    assert set(stale["training"]) | {"unet"} == set(now["training"])


def test_engine_takes_its_sampling_defaults_from_the_checkpoint(tiny_checkpoint, tmp_path):
    from engine.storage.checkpoint import update_config

    ck = copy_checkpoint(tiny_checkpoint, tmp_path / "defaults")
    update_config(ck, {"sampling": {"sampler": "heun", "steps": 2, "guidance_fade_sigma": 0.5, "vocoder": "griffin-lim"}})
    engine = Engine(ck)
    assert (engine.default_sampler.solver, engine.default_sampler.steps, engine.torch_denoiser.fade_sigma) == ("heun", 2, 0.5)
    assert torch.equal(engine.generate(7, seed=2).mels, engine.generate(7, steps=2, sampler="heun", seed=2).mels)
    assert engine.sampler_spec(nfe=7).steps == 4 and engine.sampler_spec("dpmpp_2m").nfe == 3  # the default's NFE


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_a_clip_is_the_same_whatever_the_batch_size_or_request(tiny_checkpoint, batch_size):
    """Per-clip seeds: clip k of a request depends on (seed, k) only (up to the last bits of batched sums)."""
    reference = Engine(tiny_checkpoint, batch_size=5).generate([1, 7], n=3, steps=4, seed=11, sampler="dpmpp_2m_sde")
    out = Engine(tiny_checkpoint, batch_size=batch_size).generate([1, 7], n=3, steps=4, seed=11, sampler="dpmpp_2m_sde")
    assert torch.allclose(out.mels, reference.mels, rtol=1e-4, atol=1e-4)
    shorter = Engine(tiny_checkpoint, batch_size=batch_size).generate([1], n=2, steps=4, seed=11, sampler="dpmpp_2m_sde")
    assert torch.allclose(shorter.mels, reference.mels[:2], rtol=1e-4, atol=1e-4)  # clips 0, 1 of the request
    assert not torch.allclose(reference.mels[0], reference.mels[1], atol=1e-2)  # clips differ from each other
