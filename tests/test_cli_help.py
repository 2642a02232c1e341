"""``tapdiff``'s help without torch: the parser imports nothing heavy, its copies of the engine's choices and
defaults equal the originals, every option has help that shows its default, docs/cli.md is what the parsers
render, ``--version`` and ``tapdiff memory`` go through the main parser; the errors' one base and
``repr(Engine)``. No timing here: ``benchmarks/cli_help.py`` times the help."""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine import cli_parser
from engine.cli import EXPECTED, main

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "scipy", "onnx", "onnxruntime", "tqdm", "safetensors")


def _heavy_modules_after(code: str, bypass_package_init: bool) -> list[str]:
    """The heavy top-level modules a fresh interpreter holds after ``code``; ``bypass_package_init``: engine/ is
    entered without running engine/__init__.py, so only the modules under test count."""
    stub = ("import sys, types; pkg = types.ModuleType('engine'); pkg.__path__ = [%r]; sys.modules['engine'] = pkg; "
            % str(ROOT / "engine")) if bypass_package_init else "import sys; "
    probe = (f"{stub}{code}; print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return eval(run.stdout.strip().splitlines()[-1])


PARSE = ("import engine.cli_parser as c; import engine.cli; c.build_parser(); c.version_text(); "
         "c.build_parser().parse_args(['generate']); c.render_markdown()")


def test_the_parser_imports_nothing_heavy():
    assert _heavy_modules_after(PARSE, bypass_package_init=True) == []


def test_importing_engine_and_parsing_import_no_torch():
    assert _heavy_modules_after(PARSE, bypass_package_init=False) == []


def test_the_parser_copies_equal_the_engine():
    from engine.audio.datasets import DEFAULT_DATA
    from engine.audio.vocoders import VOCODERS
    from engine.backends import BACKENDS, DEFAULT_BACKEND
    from engine.diffusion.guidance import DEFAULT_GUIDANCE
    from engine.diffusion.solvers import SOLVERS
    from engine.evaluation.memory.process_probe import RUNTIME_NAMES
    from engine.models.registry import SCORE_NETWORKS
    from engine.storage.checkpoint import DEFAULT_CHECKPOINT
    from engine.storage.config import ClassifierConfig
    from engine.training.distill import TrajectorySettings
    from engine.training.dmd import DMDSettings
    from engine.training.workflows import AdaptRun, ClassifierRun, DistillRun

    def defaults(cls, keys):
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        return {k: fields[k] for k in keys}

    assert cli_parser.SOLVERS == tuple(sorted(SOLVERS))
    assert cli_parser.BACKENDS == tuple(BACKENDS) and cli_parser.DEFAULT_BACKEND == DEFAULT_BACKEND
    assert cli_parser.VOCODERS == tuple(VOCODERS)
    assert cli_parser.DEFAULT_GUIDANCE == DEFAULT_GUIDANCE and cli_parser.DEFAULT_DATA == DEFAULT_DATA
    assert cli_parser.SCORE_NETWORKS == {k: (v.description, v.teacher) for k, v in SCORE_NETWORKS.items()}
    assert cli_parser.MEMORY_RUNTIMES == tuple(RUNTIME_NAMES)
    assert cli_parser.CLASSIFIER_WIDTHS == ClassifierConfig().widths == ClassifierRun.widths
    assert cli_parser.ADAPT_RUN == defaults(AdaptRun, cli_parser.ADAPT_RUN)
    assert cli_parser.DISTILL_RUN == defaults(DistillRun, cli_parser.DISTILL_RUN)
    assert cli_parser.TRAJECTORY_SETTINGS == defaults(TrajectorySettings, cli_parser.TRAJECTORY_SETTINGS)
    assert DistillRun.trajectories == TrajectorySettings()
    assert cli_parser.DMD_SETTINGS == defaults(DMDSettings, cli_parser.DMD_SETTINGS)
    assert cli_parser.SHIPPED_CHECKPOINT == DEFAULT_CHECKPOINT.resolve()


def test_train_classifier_defaults_are_the_runs():
    """train-classifier's defaults are ClassifierRun's (the CLI passes every field; --digit is its labels)."""
    from engine.training.workflows import ClassifierRun

    args = cli_parser.build_parser().parse_args(["train-classifier", "--out", "x"])
    for name in ("data", "seconds", "norm", "frames", "widths", "sigma_min", "batch_size", "lr", "seed"):
        assert getattr(args, name) == getattr(ClassifierRun, name), name
    assert args.digit == ClassifierRun.labels


def _all_parsers():
    parser = cli_parser.build_parser(width=100)
    return [(("tapdiff",), parser), *((("tapdiff", *path), p) for path, p in cli_parser.subcommands(parser))]


def test_every_option_has_help_that_shows_its_default():
    missing = []
    for path, p in _all_parsers():
        formatter = p._get_formatter()
        for action in p._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction) or action.required:
                continue
            name = f"{' '.join(path)} {action.option_strings[-1]}"
            if not action.help:
                missing.append(f"{name}: no help")
            elif action.default is not argparse.SUPPRESS and "(default" not in formatter._get_help_string(action):
                missing.append(f"{name}: help shows no default (a None default needs an explicit '(default: ...)')")
    assert not missing, missing


def test_subcommands_cover_every_command():
    names = {" ".join(path) for path, _ in cli_parser.subcommands(cli_parser.build_parser())}
    assert {"generate", "memory", "serve", "bench", "profile", "vocoder import", "vocoder compare"} <= names
    from engine.cli import COMMANDS

    runs = {p.get_default("run") for _, p in _all_parsers()} - {None}
    assert runs == set(COMMANDS)


def test_docs_cli_md_is_current():
    page = ROOT / "docs" / "cli.md"
    assert page.read_text(encoding="utf-8") == cli_parser.render_markdown(), (
        "docs/cli.md is stale: run `python -m engine.cli_parser --write-docs docs/cli.md`")


def test_the_markdown_does_not_depend_on_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = cli_parser.render_markdown()
    monkeypatch.setenv("COLUMNS", "250")
    assert cli_parser.render_markdown() == narrow


def test_help_names_the_real_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        main(["profile", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "(default: torch" in " ".join(out.split())
    assert cli_parser.build_parser().parse_args(["profile"]).backend == "torch"
    assert cli_parser.build_parser().parse_args(["generate"]).backend == cli_parser.DEFAULT_BACKEND


def test_version(capsys):
    from engine.provenance import code_version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    out = capsys.readouterr().out
    import importlib.metadata

    digest = json.loads((cli_parser.SHIPPED_CHECKPOINT / "config.json").read_text())["files"]["classifier.safetensors"]
    assert e.value.code == 0
    assert importlib.metadata.version("tapdiff") in out and code_version() in out and digest in out


def test_memory_is_a_subcommand_of_the_main_parser(capsys):
    with pytest.raises(SystemExit) as e:
        main(["memory", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: tapdiff memory") and "--runtimes" in out
    for bad in (["--batch", "x"], ["--runtimes", "torch,nope"], ["--guidance", "loud"], ["--nope"]):
        with pytest.raises(SystemExit) as e:
            main(["memory", *bad])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.splitlines()[-1].startswith("tapdiff") and "error:" in err, bad
        assert "Traceback" not in err


def test_memory_writes_its_report(tmp_path, monkeypatch, capsys):
    """The wiring of ``tapdiff memory`` (the measurement itself: tests/test_memory_report.py)."""
    from engine.evaluation.memory import report
    from engine.storage.checkpoint import DEFAULT_CHECKPOINT

    seen = {}

    def fake_report(checkpoint, models, batches, guidance, processes, threads, runtimes, artifacts):
        seen.update(checkpoint=checkpoint, models=models, batches=batches, runtimes=[r.label for r in runtimes])
        return {"rows": [], "checkpoint": checkpoint}

    monkeypatch.setattr(report, "memory_report", fake_report)
    monkeypatch.setattr(report, "render", lambda result, header: header + "the table\n")
    out = tmp_path / "mem"
    assert main(["memory", "--models", "tapdiff", "--batch", "2,4", "--runtimes", "torch,ort-off", "--out", str(out)]) == 0
    assert seen == {"checkpoint": str(DEFAULT_CHECKPOINT), "models": ["tapdiff"], "batches": (2, 4),
                    "runtimes": ["torch", "onnxruntime, arena off, pattern off"]}
    assert (out / "memory.md").read_text().startswith("Command: `tapdiff memory --models tapdiff")
    assert json.loads((out / "memory.json").read_text())["command"].startswith("tapdiff memory")


def test_every_engine_error_has_one_base_and_keeps_its_own():
    from engine import errors
    from engine.api import FadeNotBuilt
    from engine.batching import BatcherClosed, RequestCancelled

    defined = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, BaseException)]
    assert len(defined) >= 7
    for cls in (*defined, FadeNotBuilt, BatcherClosed, RequestCancelled):
        assert issubclass(cls, errors.TapdiffError), cls
    kept = {errors.CheckpointError: RuntimeError, errors.BackendError: RuntimeError, errors.OutputFolderError: ValueError,
            errors.AudioFileError: ValueError, errors.VocoderCacheError: ValueError,
            errors.VocoderMissing: FileNotFoundError, FadeNotBuilt: ValueError, BatcherClosed: RuntimeError,
            RequestCancelled: RuntimeError}
    assert all(issubclass(cls, base) for cls, base in kept.items())
    assert errors.TapdiffError in EXPECTED


def test_the_cli_prints_expected_errors_as_one_line_and_keeps_tracebacks_for_bugs(monkeypatch, capsys):
    from engine import cli
    from engine.batching import BatcherClosed
    from engine.errors import InvalidInput, MissingDependency, MissingFile, NotFinite

    def raising(exc):
        def run(args):
            raise exc
        return run

    for exc in (BatcherClosed("planted closed"), InvalidInput("planted value"), MissingFile("planted file"),
                NotFinite("planted nan"), MissingDependency("planted import")):
        monkeypatch.setitem(cli.COMMANDS, "export", raising(exc))
        assert main(["export"]) == 2
        err = capsys.readouterr().err
        assert err == f"tapdiff: error: {exc}\n"
    monkeypatch.setitem(cli.COMMANDS, "export", raising(KeyError("a bug")))
    with pytest.raises(KeyError):
        main(["export"])


def test_engine_repr():
    from engine.api import Engine

    engine = Engine(backend="torch", batch_size=4)
    d = engine.default_sampler
    assert repr(engine) == (f"Engine(checkpoint='fsdd', model={engine.model_name!r}, backend='torch', "
                            f"sampler={d.solver!r}, nfe={d.nfe}, batch_size=4)")


def test_warmup_builds_every_fade_and_runs_a_clip_through_each(capsys):
    import json

    from engine.api import Engine
    from engine.cli import main

    assert main(["warmup", "--backend", "torch", "--fades", "0.5,2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["fades"] == [0.0, 0.5, 2.0] and "model='tapdiff'" in out["engine"]
    engine = Engine(backend="torch", fades=(1.0,))
    calls = []
    engine.generate = lambda *a, **k: calls.append(k["spec"].fade_sigma)  # what warmup runs, per fade
    assert engine.warmup() == [0.0, 1.0] and calls == [0.0, 1.0]
