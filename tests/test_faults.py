"""Bad input and faults, property-based where the input space is large: request arguments, corrupted
checkpoints and configs, odd WAV files, a write that fails midway, a training run killed at random."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import wave

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from engine.api import Engine
from engine.audio.wav import AudioFileError, read_wav
from engine.storage.atomic import atomic_write
from engine.storage.checkpoint import CheckpointError

ANY = st.one_of(st.none(), st.booleans(), st.integers(-5, 20), st.floats(allow_nan=True, allow_infinity=True),
                st.text(max_size=3), st.lists(st.integers(-2, 12), max_size=3))
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return Engine(tiny_checkpoint)


@FAST
@given(labels=ANY, n=ANY, guidance=ANY, seed=ANY, sampler=st.sampled_from([None, "heun", "ddim", 3]),
       steps=st.one_of(st.none(), st.integers(-2, 5)), nfe=st.one_of(st.none(), st.integers(-2, 5)))
def test_any_request_is_valid_or_refused_with_a_named_reason(engine, labels, n, guidance, seed, sampler, steps, nfe):
    try:
        clips = engine.request_clips(labels, n, guidance, seed)
        spec = engine.sampler_spec(sampler, steps, nfe)
    except (ValueError, TypeError) as e:
        assert str(e) and any(w in str(e) for w in ("digit", "n must", "guidance", "seed", "labels", "sampler",
                                                    "steps", "nfe", "empty")), e
        return
    # accepted: then every part of it is well-formed
    assert len(clips) == n * (1 if labels is None or isinstance(labels, int) else len(labels))
    assert all(c.label is None or c.label in engine.labels for c in clips)
    assert math.isfinite(guidance) and guidance >= 0 and seed >= 0 and spec.steps >= 1


@FAST
@given(offset=st.integers(0, 10**9), mask=st.integers(1, 255))
def test_a_flipped_byte_anywhere_in_the_weights_is_caught(tiny_checkpoint, tmp_path_factory, offset, mask):
    ck = tmp_path_factory.mktemp("flip")
    shutil.copytree(tiny_checkpoint, ck, dirs_exist_ok=True, ignore=shutil.ignore_patterns("state"))
    path = ck / "score_subnet.safetensors"
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= mask
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="score_subnet.safetensors"):
        Engine(ck)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 0.999))
def test_a_truncated_weights_file_without_a_recorded_hash_is_caught(tiny_checkpoint, tmp_path_factory, cut):
    ck = tmp_path_factory.mktemp("cut")
    shutil.copytree(tiny_checkpoint, ck, dirs_exist_ok=True, ignore=shutil.ignore_patterns("state"))
    cfg = json.loads((ck / "config.json").read_text())
    cfg["files"].pop("score_subnet.safetensors")  # no hash to catch it: the reader must
    (ck / "config.json").write_text(json.dumps(cfg))
    path = ck / "score_subnet.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(cut * len(data))])
    with pytest.raises(CheckpointError, match="score_subnet.safetensors"):
        Engine(ck)


@pytest.mark.parametrize("section,value", [("features", {"n_mels": "80"}), ("features", [1, 2]), ("sde", None),
                                           ("classifier", {"widths": "wide"}), ("normaliser", {"mean": "x"}),
                                           ("score_subnet_config", {"heads": 4.5, "bogus": 1})])
def test_wrong_json_types_in_the_config_are_named(tiny_checkpoint, tmp_path, section, value):
    ck = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ck, ignore=shutil.ignore_patterns("state"))
    cfg = json.loads((ck / "config.json").read_text())
    cfg[section] = value if not isinstance(value, dict) else {**(cfg.get(section) or {}), **value}
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises((CheckpointError, ValueError, TypeError)):
        Engine(ck)


def _wav(path, data: bytes, channels=1, width=2, rate=16000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)


@pytest.mark.core
def test_odd_wav_files_are_read_correctly_or_refused_by_name(tmp_path):
    tone = (np.sin(np.arange(800) * 0.3) * 0.5).astype(np.float32)
    _wav(tmp_path / "empty.wav", b"")
    with pytest.raises(AudioFileError, match="empty.wav"):
        read_wav(tmp_path / "empty.wav")
    stereo = np.stack([tone, -tone], 1)
    _wav(tmp_path / "stereo.wav", (stereo * 32767).astype("<i2").tobytes(), channels=2)
    x, rate = read_wav(tmp_path / "stereo.wav")
    assert rate == 16000 and np.abs(x).max() < 1e-3  # averaged to mono: the channels cancel
    _wav(tmp_path / "u8.wav", ((tone + 1) * 127.5).astype(np.uint8).tobytes(), width=1, rate=8000)
    x, rate = read_wav(tmp_path / "u8.wav")
    assert rate == 8000 and np.abs(x - tone).max() < 0.02
    (tmp_path / "not.wav").write_bytes(b"OggS" + bytes(100))
    with pytest.raises(AudioFileError, match="not.wav"):
        read_wav(tmp_path / "not.wav")
    data = (tmp_path / "stereo.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) - 7])
    with pytest.raises(AudioFileError, match="cut.wav"):
        read_wav(tmp_path / "cut.wav")


@pytest.mark.core
def test_a_write_that_fails_midway_leaves_the_previous_file_and_nothing_else(tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"good")

    def disk_full(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half of the new cont")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, disk_full)
    assert target.read_bytes() == b"good" and [p.name for p in tmp_path.iterdir()] == ["weights.bin"]


_TRAIN = r"""
import sys, torch
from engine.audio.datasets import FeatureSet, Normaliser
from engine.diffusion.taps import TapExtractor
from engine.models.classifier import NoiseConditionedClassifier
from engine.models.registry import SCORE_NETWORKS
from engine.storage.config import ClassifierConfig, SDEConfig, SubnetConfig, TrainConfig
from engine.training.score import train_score
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
data = FeatureSet(torch.randn(8, 80, 72, generator=g).cumsum(-1) * 0.2 - 6, torch.arange(8) % 10, torch.tensor([[0, 72]] * 8))
tx = TapExtractor(NoiseConditionedClassifier(ClassifierConfig(widths=(8, 8, 16, 16), emb_dim=16)).eval(), SDEConfig())
cfg = TrainConfig(batch_size=4, lr=3e-3, seconds=1e9, max_steps=int(sys.argv[2]), seed=3)
ema, log = train_score(data, Normaliser.fit(data.mels), tx, SCORE_NETWORKS["tapdiff"],
                       SubnetConfig(widths=(8, 8, 16, 16), emb_dim=16, heads=2), cfg, (80, 72), state_path=__import__("pathlib").Path(sys.argv[1]),
                       progress=False, checkpoint_every_s=0.0)
__import__("safetensors.torch").torch.save_file(ema.model.state_dict(), sys.argv[1] + ".final")
"""


def _train(state, steps, kill_after=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _TRAIN, str(state), str(steps)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_after is None:
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
        return
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.parametrize("kill_after", [0.5, 3.0, 6.0])
def test_training_killed_at_any_moment_resumes_to_the_uninterrupted_weights(tmp_path, kill_after):
    _train(tmp_path / "whole.st", 40)
    _train(tmp_path / "killed.st", 40, kill_after=kill_after)  # SIGKILL: no clean-up runs
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    _train(tmp_path / "killed.st", 40)  # resumes from whatever the kill left (or starts afresh)
    a, b = (load_file(str(tmp_path / f"{n}.st") + ".final") for n in ("whole", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(p.endswith(".tmp") for p in leftovers)  # a kill can strand a temp file, never a half state file
