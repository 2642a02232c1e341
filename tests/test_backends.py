"""The exported score graph on the sampling path: onnxruntime samples what eager torch samples, the artifact
cache rebuilds what is stale or corrupt, and what cannot run here says so (TensorRT's logic is checked
without TensorRT)."""
import json
import logging
import shutil

from pathlib import Path

import pytest
import torch

import export.artifacts as artifacts
from engine.api import Engine
from engine.errors import BackendError
from engine.cli import main
from export.tensorrt_build import plan_is_intact
from engine.runtimes.trt import binding_plan, select_graph


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("artifacts")


@pytest.mark.parametrize("model", ["tapdiff", "two-model"])
def test_onnxruntime_samples_what_torch_samples(tiny_with_baselines, cache, model):
    """Both score models run on both backends, through the same solvers, seeds and guidance code."""
    eager = Engine(tiny_with_baselines, model=model, backend="torch")
    ort = Engine(tiny_with_baselines, model=model, backend="onnxruntime", artifacts=cache)
    assert ort.denoiser.providers() == ["CPUExecutionProvider"]
    for sampler, guidance in (("dpmpp_2m_sde", 3.0), ("heun", 0.0)):
        a = eager.generate([1, 7], n=2, nfe=6, sampler=sampler, guidance=guidance, seed=4)
        b = ort.generate([1, 7], n=2, nfe=6, sampler=sampler, guidance=guidance, seed=4)
        assert float((a.mels - b.mels).abs().max()) <= 1e-3 * float(a.mels.abs().max())


def _graphs(bundle_dir, cache):
    from engine.diffusion.score_model import score_model
    from engine.bundle import load_bundle

    b = load_bundle(bundle_dir)
    m = score_model(b)
    spec = artifacts.GraphSpec.of(b, m)
    return artifacts.ensure_score_graphs(m, b, spec, cache), spec


def test_artifacts_are_reused_and_rebuilt_when_stale_or_corrupt(tiny_checkpoint, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="export.artifacts")
    lines = []  # the warnings, each naming what is rebuilt and why

    def rebuild(bundle_dir, cache):
        caplog.clear()
        out = _graphs(bundle_dir, cache)
        lines.extend(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        return out

    graphs, spec = rebuild(tiny_checkpoint, tmp_path)
    assert lines == [] and set(graphs) == {(True, None), (False, None)}
    assert [r.getMessage() for r in caplog.records][0].startswith("exporting the tapdiff score graph")
    guided = graphs[(True, None)]
    # reused: nothing is exported again
    real = artifacts.export_score_graph
    monkeypatch.setattr(artifacts, "export_score_graph", lambda *a: pytest.fail("re-exported a good artifact"))
    assert rebuild(tiny_checkpoint, tmp_path)[0] == graphs and lines == []
    monkeypatch.setattr(artifacts, "export_score_graph", real)
    # truncated graph: rebuilt, with the reason
    data = guided.read_bytes()
    guided.write_bytes(data[: len(data) // 2])
    rebuild(tiny_checkpoint, tmp_path)
    assert len(lines) == 1 and "corrupt" in lines[0] and str(guided) in lines[0]
    assert artifacts.stale_reason(guided, spec) is None
    # a manifest from other weights at this path: rebuilt
    manifest = json.loads(guided.with_suffix(".json").read_text())
    manifest["artifact"]["weights"][1][1] = "0" * 64
    guided.with_suffix(".json").write_text(json.dumps(manifest))
    rebuild(tiny_checkpoint, tmp_path)
    assert "built for other weights" in lines[1]
    # an interrupted export (graph without manifest): rebuilt
    guided.with_suffix(".json").unlink()
    rebuild(tiny_checkpoint, tmp_path)
    assert "missing" in lines[2] and artifacts.stale_reason(guided, spec) is None


@pytest.mark.slow  # two exports; tests/test_cache_identity.py keeps artifact identity in the quick tier
def test_other_weights_get_another_artifact(tiny_checkpoint, tmp_path, fsdd_root):
    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other, ignore=shutil.ignore_patterns("state"))
    assert main(["train-score", "--checkpoint", str(other), "--seconds", "60", "--max-steps", "3", "--widths", "8,8,16,16",
                 "--seed", "5", "--heldout-clips", "0", "--data", str(fsdd_root)]) == 0
    a, _ = _graphs(tiny_checkpoint, tmp_path / "cache")
    b, _ = _graphs(other, tmp_path / "cache")
    assert a[(True, None)].parent != b[(True, None)].parent  # keyed by the weights' sha256


def test_export_command_builds_what_the_engine_loads_and_says_why_no_plans(tiny_checkpoint, tmp_path, capsys,
                                                                          caplog):
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path), "--max-batch", "4"]) == 0
    out = capsys.readouterr()
    paths = out.out.split()
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == ["guided_dyn.onnx", "unguided_dyn.onnx"]
    assert "no TensorRT plans built" in out.err
    before = {p: Path(p).stat().st_mtime_ns for p in paths}
    engine = Engine(tiny_checkpoint, backend="onnxruntime", artifacts=tmp_path, batch_size=4)
    assert {p: Path(p).stat().st_mtime_ns for p in paths} == before  # loaded as exported, not exported again
    assert "rebuilding" not in caplog.text
    assert engine.generate(7, n=1, nfe=1).mels.shape == (1, 80, 72)
    with pytest.raises(BackendError, match="fp16 asks for TensorRT plans"):
        main_raises(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path), "--fp16"])


def main_raises(argv):
    """Run a command's function directly (main() would turn its error into exit status 2)."""
    from engine.cli import COMMANDS, build_parser

    args = build_parser().parse_args(argv)
    args.argv = argv
    return COMMANDS[args.run](args)


def test_static_graphs_serve_their_batch_sizes_only(tiny_checkpoint, tmp_path):
    from export.artifacts import GraphSpec, ensure_score_graphs

    from engine.bundle import load_bundle
    from engine.diffusion.score_model import score_model
    from engine.runtimes.ort import OrtScoreModel

    bundle = load_bundle(tiny_checkpoint)
    model = score_model(bundle)
    graphs = ensure_score_graphs(model, bundle, GraphSpec.of(bundle, model, (1, 3)), tmp_path)
    assert sorted(p.name for p in graphs.values()) == ["guided_b1.onnx", "guided_b3.onnx", "unguided_b1.onnx",
                                                       "unguided_b3.onnx"]
    ort = OrtScoreModel(graphs)
    x, s = torch.randn(3, 1, 80, 72), torch.ones(3)
    assert ort(x, s).shape == (3, 1, 80, 72)
    with pytest.raises(ValueError, match="static batch sizes \\[1, 3\\]"):
        ort(torch.randn(2, 1, 80, 72), torch.ones(2))


def test_backends_that_cannot_run_here_say_why(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import importlib.util

    if torch.cuda.is_available():  # the GPU machine: what it lacks is named instead
        if importlib.util.find_spec("tensorrt") is None:
            with pytest.raises(ImportError, match="TensorRT is not installed"):
                Engine(tiny_checkpoint, backend="tensorrt", device="cuda", artifacts=tmp_path)
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            with pytest.raises(BackendError, match="has no CUDAExecutionProvider"):
                Engine(tiny_checkpoint, backend="onnxruntime", device="cuda", artifacts=tmp_path)
        assert Engine(tiny_checkpoint, device="cuda").backend == "torch"  # auto on CUDA: the capturable backend
    else:
        with pytest.raises(BackendError, match="needs an NVIDIA GPU"):
            Engine(tiny_checkpoint, backend="tensorrt", artifacts=tmp_path)
        with pytest.raises(BackendError, match="CUDA is not available"):
            Engine(tiny_checkpoint, device="cuda", backend="onnxruntime", artifacts=tmp_path)
        assert main(["generate", "--checkpoint", str(tiny_checkpoint), "--backend", "tensorrt", "--digit", "1",
                     "--out", str(tmp_path / "wav")]) == 2
        assert "needs an NVIDIA GPU" in capsys.readouterr().err and not (tmp_path / "wav").exists()
        for cmd in (["generate", "--digit", "1", "--out", str(tmp_path / "wav")], ["bench", "--out", str(tmp_path / "b")]):
            assert main([cmd[0], "--checkpoint", str(tiny_checkpoint), "--device", "cuda", *cmd[1:]]) == 2
            assert "CUDA is not available" in capsys.readouterr().err
        assert not (tmp_path / "wav").exists() and not (tmp_path / "b").exists()
    import onnxruntime

    from engine.runtimes.ort import checked_session, session_options

    graphs, _ = _graphs(tiny_checkpoint, tmp_path)
    path, so = graphs[(True, None)], session_options(1, "all")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendError, match="has no CUDAExecutionProvider"):
            checked_session(path, so, ["CUDAExecutionProvider"])
    # onnxruntime-gpu's silent fallback: the provider is listed, the session still runs on the CPU
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real_session = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession",
                        lambda p, o, providers: real_session(p, o, providers=["CPUExecutionProvider"]))
    with pytest.raises(BackendError, match="fell back"):
        checked_session(path, so, ["CUDAExecutionProvider"])
    with pytest.raises(ValueError, match="unknown backend"):
        Engine(tiny_checkpoint, backend="tvm")


def test_missing_onnxruntime_is_named(tiny_checkpoint, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    graphs, _ = _graphs(tiny_checkpoint, tmp_path)
    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    from engine.runtimes.ort import OrtScoreModel

    with pytest.raises(ImportError, match="needs onnxruntime"):
        OrtScoreModel(graphs)
    import importlib.util

    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "onnxruntime" else real_find(m, *a))
    with pytest.raises(ImportError, match="needs onnxruntime \\(pip install onnx onnxruntime\\)"):
        Engine(tiny_checkpoint, backend="onnxruntime", artifacts=tmp_path)


def test_tensorrt_graph_choice_and_bindings_are_checked_against_the_manifest(tiny_checkpoint, tmp_path):
    graphs, _ = _graphs(tiny_checkpoint, tmp_path)
    manifest = json.loads(graphs[(True, None)].with_suffix(".json").read_text())
    feeds = {"x_t": torch.zeros(5, 1, 80, 72), "sigma": torch.ones(5), "onehot": torch.zeros(5, 10), "gamma": torch.ones(5)}
    assert dict(binding_plan(manifest, feeds)) == {"x_t": (5, 1, 80, 72), "sigma": (5,), "onehot": (5, 10), "gamma": (5,)}
    with pytest.raises(ValueError, match="do not match"):
        binding_plan(manifest, {k: v for k, v in feeds.items() if k != "gamma"})
    with pytest.raises(ValueError, match="does not fit"):
        binding_plan(manifest, {**feeds, "x_t": torch.zeros(5, 1, 80, 71)})
    with pytest.raises(ValueError, match="batch"):
        binding_plan(manifest, {**feeds, "sigma": torch.ones(4)})
    have = [(True, 1), (True, 16), (False, None)]
    assert select_graph(have, True, 16) == (True, 16) and select_graph(have, False, 7, max_batch=16) == (False, None)
    with pytest.raises(ValueError, match="static batch sizes \\[1, 16\\]"):
        select_graph(have, True, 4)
    with pytest.raises(ValueError, match="maximum 16"):
        select_graph(have, False, 32, max_batch=16)


def test_a_truncated_plan_is_not_reused(tmp_path):
    import hashlib

    plan = tmp_path / "g.plan"
    plan.write_bytes(b"serialised engine bytes")
    assert not plan_is_intact(plan)  # no sha256 beside it: an interrupted build
    plan.with_suffix(".sha256").write_text(hashlib.sha256(plan.read_bytes()).hexdigest())
    assert plan_is_intact(plan)
    plan.write_bytes(b"serialised engi")
    assert not plan_is_intact(plan)
