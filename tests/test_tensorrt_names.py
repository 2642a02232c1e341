"""Every TensorRT name tapdiff uses exists in the real Python bindings of TensorRT 10.13.3.9 and 11.4.0.106,
or is used only behind a feature test.

TensorRT cannot be installed here, so the names are checked against lists read from the bindings wheels'
string tables (``export.tensorrt_names``; committed under ``tests/data/tensorrt_names``, so this runs
offline), and the source side is read by ``export.tensorrt_usage`` (its docstring gives the rules). A name
found only as the tail of a longer string (see ``export.tensorrt_names``) must be reviewed in ``TAIL_ONLY``
below. The checker is exercised on synthetic sources too, so a bogus or an unguarded name is shown to fail.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from export.tensorrt_names import VERSIONS, committed_indexes, download_wheel, list_path, read_list, wheel_names
from export.tensorrt_usage import ROOT, check, collect, project_sources, tail_only

# Names present in some checked version only as the tail of a longer string, each reviewed by hand.
TAIL_ONLY = {
    "SOFTMAX": "LayerType.SOFTMAX (both); stored inside RAGGED_SOFTMAX",
    "REDUCE": "LayerType.REDUCE (both); 11 stores it inside ALL_REDUCE",
    "num_errors": "IParser.num_errors (both); stored inside get_num_errors",
    "serialize": "ITimingCache.serialize (both); stored inside get_fields_to_serialize",
    "precision": "ILayer.precision (10 only; its docstring names ILayer.precision); stored inside reset_precision",
    "set_output_type": "ILayer.set_output_type (10 only; named in the same docstring); inside reset_output_type",
}
# Names the walker must find in the project's TensorRT code: if it stops following objects, this fails.
MUST_SEE = {"FP16", "OBEY_PRECISION_CONSTRAINTS", "precision", "set_output_type", "create_network", "WORKSPACE",
            "set_memory_pool_limit", "build_serialized_network", "create_timing_cache", "deserialize_cuda_engine",
            "create_execution_context", "set_input_shape", "set_tensor_address", "get_tensor_shape",
            "execute_async_v3", "device_memory_size", "device_memory_size_v2", "ignore_mismatch", "num_layers"}

@pytest.fixture(scope="module")
def indexes():
    return committed_indexes()


@pytest.fixture(scope="module")
def project_reports():
    return [collect(p.read_text(), str(p.relative_to(ROOT))) for p in project_sources()]


def test_the_tensorrt_modules_are_all_found():
    files = {str(p.relative_to(ROOT)) for p in project_sources()}
    assert {"export/tensorrt_build.py", "engine/runtimes/trt.py"} <= files, files


def test_every_tensorrt_name_the_project_uses_exists_in_10_and_11_or_is_guarded(project_reports, indexes):
    problems = check(project_reports, indexes)
    assert not problems, "\n".join(problems)
    seen = {u.name for r in project_reports for u in r.uses}
    assert MUST_SEE <= seen, f"the walker lost track of TensorRT objects: not seen {sorted(MUST_SEE - seen)}"


def test_names_found_only_as_string_tails_are_reviewed(project_reports, indexes):
    tails = tail_only(project_reports, indexes)
    assert tails <= set(TAIL_ONLY), f"review these (present only inside longer strings): {sorted(tails - set(TAIL_ONLY))}"
    assert set(TAIL_ONLY) <= tails, f"no longer used, or now whole strings: {sorted(set(TAIL_ONLY) - tails)}"


def test_the_name_lists_hold_the_facts_the_code_relies_on(indexes):
    v10, v11 = (indexes[v] for v in VERSIONS)
    for weak in ("FP16", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "device_memory_size"):
        assert v10.lookup(weak) == "exact" and v11.lookup(weak) is None, weak
    for gone in ("precision", "set_output_type"):  # ILayer's weak-typing attributes: not even a string tail in 11
        assert v10.lookup(gone) and v11.lookup(gone) is None, gone
    for both in ("STRONGLY_TYPED", "create_network", "execute_async_v3", "set_tensor_address", "set_input_shape",
                 "get_tensor_shape", "deserialize_cuda_engine", "create_timing_cache", "set_timing_cache",
                 "WORKSPACE", "build_serialized_network", "device_memory_size_v2", "NORMALIZATION", "__version__"):
        assert v10.lookup(both) == "exact" and v11.lookup(both) == "exact", both
    assert v10.lookup("EXPLICIT_BATCH") == "exact" and v11.lookup("EXPLICIT_BATCH") is None
    for v in VERSIONS:  # the full identifier set, not a hand-picked one
        assert 1000 < len(indexes[v].names) and list_path(v).stat().st_size < 1 << 20


BOGUS = '''
import tensorrt as trt

def build(builder, config):
    config.set_flag(trt.BuilderFlag.FP17)
'''
UNGUARDED = '''
import tensorrt as trt

def build(builder):
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
'''
GUARDED = '''
import tensorrt as trt

VERSION_SPECIFIC = {"FP16": "weak", "OBEY_PRECISION_CONSTRAINTS": "weak", "device_memory_size": "getattr"}

def weak(trt):
    return hasattr(trt.BuilderFlag, "FP16")

def build(network: trt.INetworkDefinition, fp16):
    config = trt.Builder(trt.Logger()).create_builder_config()
    if fp16:
        if not weak(trt):
            raise RuntimeError("strongly typed only")
        config.set_flag(trt.BuilderFlag.FP16)
    if weak(trt):
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return config

def memory(engine: trt.ICudaEngine):
    return getattr(engine, "device_memory_size", None)
'''


def test_the_checker_fails_on_a_name_no_version_has(indexes):
    problems = check([collect(BOGUS, "bogus.py")], indexes)
    assert len(problems) == 1 and "'FP17'" in problems[0] and "any checked version" in problems[0], problems


def test_the_checker_fails_on_an_unguarded_name_one_version_lacks(indexes):
    problems = check([collect(UNGUARDED, "unguarded.py")], indexes)
    assert len(problems) == 1 and "'OBEY_PRECISION_CONSTRAINTS' is missing from TensorRT 11.4.0.106" in problems[0], problems
    listed = UNGUARDED.replace("def build", 'VERSION_SPECIFIC = {"OBEY_PRECISION_CONSTRAINTS": "getattr"}\n\ndef build')
    problems = check([collect(listed, "listed.py")], indexes)  # listed, but still used outside a guard
    assert len(problems) == 1 and "outside its guard" in problems[0], problems


def test_the_checker_accepts_guarded_uses_and_rejects_a_stale_or_fake_guard(indexes):
    assert check([collect(GUARDED, "guarded.py")], indexes) == []
    stale = GUARDED.replace('"getattr"}', '"getattr", "create_network": "weak"}')
    assert any("every checked TensorRT has" in p for p in check([collect(stale, "stale.py")], indexes))
    fake = GUARDED.replace('return hasattr(trt.BuilderFlag, "FP16")', "return True")
    problems = check([collect(fake, "fake.py")], indexes)
    assert any("is not a function here that feature-tests" in p for p in problems), problems
    outside = GUARDED.replace("    return config\n", "    return config, trt.BuilderFlag.FP16\n")
    problems = check([collect(outside, "outside.py")], indexes)
    assert len(problems) == 1 and "'FP16'" in problems[0] and "outside its guard weak" in problems[0], problems


def test_the_checker_follows_objects_through_helpers_and_attributes(indexes):
    source = '''
from .tensorrt_build import _tensorrt

class Model:
    def __init__(self):
        trt = _tensorrt()
        self.engines = {}
        self.engines[0] = trt.Runtime(trt.Logger()).deserialize_cuda_engine(b"")

    def _ctx(self, key) -> trt.IExecutionContext:
        return self.engines[key].create_execution_context()

    def run(self):
        ctx = self._ctx(0)
        ctx.execute_async_v4(0)
'''
    source = "import tensorrt as trt\n" + source  # the annotation's trt, as under TYPE_CHECKING
    report = collect(source, "model.py")
    assert {"Runtime", "Logger", "deserialize_cuda_engine", "create_execution_context", "execute_async_v4"} <= \
        {u.name for u in report.uses}
    problems = check([report], indexes)
    assert len(problems) == 1 and "'execute_async_v4'" in problems[0], problems


@pytest.mark.skipif(not (os.environ.get("TAPDIFF_TRT_WHEEL_DIR") or os.environ.get("TAPDIFF_TRT_DOWNLOAD")),
                    reason="re-deriving the lists needs the bindings wheels: set TAPDIFF_TRT_WHEEL_DIR to a folder "
                           "holding them, or TAPDIFF_TRT_DOWNLOAD=1 to fetch them from PyPI")
def test_the_committed_lists_are_what_the_wheels_hold(tmp_path):
    wheel_dir = Path(os.environ.get("TAPDIFF_TRT_WHEEL_DIR") or Path.home() / ".cache" / "tapdiff" / "tensorrt-wheels")
    for version in VERSIONS:
        assert wheel_names(download_wheel(version, wheel_dir)) == read_list(list_path(version)), version


# --- Feature detection, plan cache and per-thread contexts, on stand-in TensorRT objects --------------------
# These exercise tapdiff's logic around TensorRT, not TensorRT: the stand-ins only carry the names the real
# 10.x / 11.x bindings have (checked above).

def _fake_trt(version: str):
    from types import SimpleNamespace as NS

    flags = dict(FP16="FP16", OBEY_PRECISION_CONSTRAINTS="OBEY") if version.startswith("10.") else {}
    return NS(__version__=version, float32="fp32", BuilderFlag=NS(TF32="TF32", **flags),
              LayerType=NS(SOFTMAX="softmax", REDUCE="reduce", NORMALIZATION="norm", CONVOLUTION="conv"))


def test_fp16_is_refused_by_name_on_a_strongly_typed_only_tensorrt(monkeypatch, tmp_path):
    from engine.errors import BackendError
    from export import tensorrt_build as tb

    trt10, trt11 = _fake_trt("10.13.3.9"), _fake_trt("11.4.0.106")
    assert tb.weakly_typed(trt10) and not tb.weakly_typed(trt11)
    tb.check_precision(trt10, True), tb.check_precision(trt11, False)
    with pytest.raises(BackendError, match=r"TensorRT 11\.4\.0\.106 .*strongly typed only.*fp32 plan.*TensorRT 10"):
        tb.check_precision(trt11, True)
    monkeypatch.setattr(tb, "_tensorrt", lambda: trt11)
    with pytest.raises(BackendError, match="strongly typed only"):  # before anything is read or built
        tb.build_engine(tmp_path / "absent.onnx", tmp_path / "x.plan", {}, fp16=True)
    with pytest.raises(BackendError, match="strongly typed only"):
        tb.cached_engine(tmp_path / "absent.onnx", tmp_path, fp16=True)
    assert not list(tmp_path.iterdir())


def test_fp16_pins_softmax_reductions_and_normalisation_to_fp32_under_weak_typing():
    from types import SimpleNamespace as NS

    from engine.errors import BackendError
    from export.tensorrt_build import enable_fp16, keep_fp32

    class Layer:
        def __init__(self, kind):
            self.type, self.num_outputs, self.precision, self.outputs = kind, 2, None, {}

        def set_output_type(self, j, dtype):
            self.outputs[j] = dtype

    layers = [Layer(k) for k in ("conv", "softmax", "reduce", "norm", "conv")]
    network = NS(num_layers=len(layers), get_layer=layers.__getitem__)
    flags = []
    assert enable_fp16(_fake_trt("10.13.3.9"), NS(set_flag=flags.append), network) == 3
    assert flags == ["FP16", "OBEY"]
    assert [l.precision for l in layers] == [None, "fp32", "fp32", "fp32", None]
    assert layers[1].outputs == {0: "fp32", 1: "fp32"} and layers[0].outputs == {}
    with pytest.raises(BackendError, match="strongly typed only"):
        keep_fp32(_fake_trt("11.4.0.106"), network)


def test_engine_device_memory_prefers_the_v2_size_and_falls_back():
    from types import SimpleNamespace as NS

    from engine.runtimes.trt import engine_device_memory

    assert engine_device_memory(NS(device_memory_size_v2=7 << 20, device_memory_size=5 << 20)) == 7 << 20  # 10.1+
    assert engine_device_memory(NS(device_memory_size_v2=7 << 20)) == 7 << 20  # 11
    assert engine_device_memory(NS(device_memory_size=5 << 20)) == 5 << 20  # 10.0
    assert engine_device_memory(NS()) is None


def test_a_plan_with_a_missing_unreadable_or_wrong_sidecar_is_rebuilt_saying_why(monkeypatch, tmp_path, capsys, caplog):
    import contextlib
    import json
    import logging

    import torch

    from export import tensorrt_build as tb

    onnx = tmp_path / "g.onnx"
    onnx.write_bytes(b"graph")
    onnx.with_suffix(".json").write_text(json.dumps({"inputs": [{"name": "x_t", "shape": [2, 1, 8, 8]}]}))
    builds = []

    def fake_build(onnx_path, engine_path, profile, fp16, timing_cache=None):
        builds.append(engine_path)
        return tb.atomic_write_bytes(engine_path, b"serialised engine %d" % len(builds))

    monkeypatch.setattr(tb, "_tensorrt", lambda: _fake_trt("11.4.0.106"))
    monkeypatch.setattr(tb, "build_engine", fake_build)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Stand-in GPU")

    def run():
        """The plan, and the warnings said on the way (nothing is printed)."""
        caplog.clear()
        path = tb.cached_engine(onnx, tmp_path / "trt")
        assert capsys.readouterr() == ("", "")
        return path, [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    plan, said = run()
    assert len(builds) == 1 and said == [] and tb.plan_is_intact(plan)
    assert run() == (plan, []) and len(builds) == 1  # intact: reused
    sidecar = tb.sidecar_path(plan)
    for damage, why in [(lambda: sidecar.unlink(), "no sha256 sidecar"),
                        (lambda: sidecar.write_bytes(b"\xff\xfe\x00"), "is unreadable"),
                        (lambda: sidecar.write_text("not a digest"), "does not hold a sha256"),
                        (lambda: plan.write_bytes(plan.read_bytes()[:5]), "bytes differ")]:
        damage()
        n = len(builds)
        assert tb.plan_problem(plan) is not None and why in tb.plan_problem(plan)
        path, said = run()
        assert path == plan and len(builds) == n + 1 and tb.plan_is_intact(plan)
        assert len(said) == 1 and said[0].startswith(f"rebuilding {plan}: ") and why in said[0], said
    # identity, not only integrity: another graph's plan copied over this one's name, its sidecar with it
    other = tmp_path / "other.onnx"
    other.write_bytes(b"another graph")
    other.with_suffix(".json").write_text(onnx.with_suffix(".json").read_text())
    other_plan = tb.cached_engine(other, tmp_path / "trt")
    n = len(builds)
    for suffix in (".plan", ".sha256", ".key"):
        plan.with_suffix(suffix).write_bytes(other_plan.with_suffix(suffix).read_bytes())
    assert tb.plan_is_intact(plan)  # its bytes match its sidecar
    path, said = run()
    assert len(builds) == n + 1 and "built for another graph" in said[0], said
    tb.identity_path(plan).unlink()
    assert "cache key" in tb.plan_problem(plan, plan.stem.rsplit("-", 1)[1])


def test_each_thread_gets_its_own_execution_context_per_graph(monkeypatch, tmp_path):
    import threading
    from types import SimpleNamespace as NS

    import torch

    from engine.runtimes import trt as tr

    created = []

    class Engine:
        num_io_tensors = 0
        device_memory_size_v2 = 1 << 20

        def create_execution_context(self):
            created.append(threading.get_ident())
            return NS(engine=self, n=len(created))

    trt = _fake_trt("11.4.0.106")
    trt.Logger = lambda level=None: "logger"
    trt.Logger.WARNING = 2
    trt.Runtime = lambda logger: NS(deserialize_cuda_engine=lambda blob: Engine())
    monkeypatch.setattr(tr, "_tensorrt", lambda: trt)
    monkeypatch.setattr(tr, "shared_logger", lambda trt: "logger")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda d: __import__("contextlib").nullcontext())
    plan = tmp_path / "g.plan"
    plan.write_bytes(b"plan")
    model = tr.TrtScoreModel({(False, 4): plan, (True, 4): plan}, {}, device="cuda")
    assert model.device == torch.device("cuda", 0)  # pinned to a device index at construction
    assert model.device_memory() == {(False, 4): 1 << 20, (True, 4): 1 << 20}
    here = model._context((False, 4))
    assert model._context((False, 4)) is here and model._context((True, 4)) is not here
    others, start = [], threading.Barrier(3)

    def call():
        start.wait()
        others.append((model._context((False, 4)), model._context((False, 4))))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a is b for a, b in others)  # one per thread, reused there
    assert len({id(a) for a, _ in others} | {id(here)}) == 4 and len(created) == 5
