"""How the engine speaks: no library module prints, ``tapdiff`` shows what the engine logs on stderr at the level
``-v`` / ``-q`` choose, an application quiets the engine through its loggers; and the label's one spelling,
``digit``, beside the deprecated spellings that shipped (``--digits``, ``--labels``, ``labels=``)."""
from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

import pytest
import torch

from engine import cli
from engine.cli import main

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("engine", "export", "kernels")
CLI_MODULES = {"engine/cli.py", "engine/cli_parser.py"}  # where a command's output is printed


def print_uses(source: str) -> list[int]:
    """Lines of ``source`` that use the builtin ``print``: calls, and references such as ``log=print``."""
    return sorted(node.lineno for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.Name) and node.id == "print")


def test_print_uses_finds_calls_and_references_but_not_text():
    source = "import sys\nprint('x', file=sys.stderr)\ndef f(log=print):\n    pass\ns = 'print(1)'  # print()\n"
    assert print_uses(source) == [2, 3]


def test_no_library_module_prints():
    found = []
    for package in LIBRARY:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if name not in CLI_MODULES:
                found += [f"{name}:{line}" for line in print_uses(path.read_text(encoding="utf-8"))]
    assert not found, f"library code logs (logging.getLogger(__name__)), never prints: {found}"


# ------------------------------------------------------------------------------------------------ the CLI's levels
def _logs_at_every_level(args) -> int:
    for name in ("engine.backends", "export.artifacts"):
        logger = logging.getLogger(name)
        logger.debug("planted debug")
        logger.info("planted info")
        logger.warning("planted warning")
    return 0


EVERY_LEVEL = ("debug", "info", "warning")


@pytest.mark.parametrize("flag,shown", [(None, EVERY_LEVEL[1:]), ("-q", ("warning",)), ("--quiet", ("warning",)),
                                        ("-v", EVERY_LEVEL), ("--verbose", EVERY_LEVEL)])
def test_v_and_q_set_what_tapdiff_shows_before_or_after_the_command(monkeypatch, capsys, flag, shown):
    monkeypatch.setitem(cli.COMMANDS, "export", _logs_at_every_level)
    levels = {name: logging.getLogger(name).level for name in ("engine", "export")}
    for argv in ([flag, "export"], ["export", flag]):
        assert main([a for a in argv if a is not None]) == 0
        out, err = capsys.readouterr()
        want = {"debug": ["tapdiff: debug: engine.backends: planted debug",
                          "tapdiff: debug: export.artifacts: planted debug"],
                "info": ["tapdiff: planted info"] * 2, "warning": ["tapdiff: warning: planted warning"] * 2}
        assert out == "" and sorted(err.splitlines()) == sorted(line for level in shown for line in want[level]), argv
    assert {name: logging.getLogger(name).level for name in levels} == levels  # left as they were


def test_generate_q_prints_only_the_paths_and_the_clip_line_counts_the_whole_wait(tiny_checkpoint, tmp_path, capsys,
                                                                                   monkeypatch):
    """The clip line counts loading (a first run's export, planted here as a half-second load) as well as
    sampling and writing, each figure named."""
    import time

    from engine.api import Engine

    common = ["generate", "--checkpoint", str(tiny_checkpoint), "--digit", "7", "--nfe", "2", "--backend", "torch"]
    assert main(["-q", *common, "--out", str(tmp_path / "q")]) == 0
    out, err = capsys.readouterr()
    assert out.split() == [str(tmp_path / "q" / "7_0.wav")] and err == ""
    load = Engine.__init__
    monkeypatch.setattr(Engine, "__init__", lambda self, *a, **k: (time.sleep(0.5), load(self, *a, **k))[1])
    assert main([*common, "--out", str(tmp_path / "info")]) == 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    got = re.fullmatch(r"tapdiff: 1 clip\(s\) in ([\d.]+) s \(loading the engine ([\d.]+) s, .*; generating and "
                       r"writing ([\d.]+) s\)", line)
    assert got, line
    total, loading, generating = map(float, got.groups())
    assert loading >= 0.5 and total >= loading and abs(total - loading - generating) <= 0.11, line


@pytest.mark.slow  # three exports; the quick tier keeps the other logging tests
def test_an_application_quiets_the_engine_through_its_loggers(tiny_checkpoint, tmp_path, caplog):
    """What an application that shows info records sees of an export on a CPU machine (a warning that no
    TensorRT plans are built, an info line per exported graph), and that the loggers "engine" and "export"
    quiet it."""
    from engine.backends import export_artifacts

    caplog.set_level(logging.INFO)
    export_artifacts(tiny_checkpoint, None, tmp_path / "shown", max_batch=4)
    assert {"engine.backends", "export.artifacts"} <= {r.name for r in caplog.records}
    caplog.clear()
    loggers = [logging.getLogger(name) for name in ("engine", "export")]
    try:
        loggers[0].setLevel(logging.ERROR)
        export_artifacts(tiny_checkpoint, None, tmp_path / "engine_quiet", max_batch=4)
        assert caplog.records and not [r for r in caplog.records if r.name.startswith("engine")]
        caplog.clear()
        loggers[1].setLevel(logging.ERROR)
        export_artifacts(tiny_checkpoint, None, tmp_path / "quiet", max_batch=4)
        assert caplog.records == []
    finally:
        for logger in loggers:
            logger.setLevel(logging.NOTSET)


def test_export_tracer_warnings_become_one_debug_line(tiny_checkpoint, tmp_path, caplog, recwarn):
    from engine.backends import export_artifacts

    caplog.set_level(logging.DEBUG, logger="export.onnx_export")
    export_artifacts(tiny_checkpoint, None, tmp_path, max_batch=4)
    assert not [w for w in recwarn if issubclass(w.category, torch.jit.TracerWarning)]
    lines = [r.getMessage() for r in caplog.records if r.name == "export.onnx_export"]
    assert len(lines) == 2 and all("TracerWarning(s) silenced" in line for line in lines), lines  # one per graph


def test_progress_is_a_line_every_few_seconds_and_none_for_short_work(monkeypatch, caplog):
    from types import SimpleNamespace

    from engine import progress

    now = [0.0]
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: now[0]))
    caplog.set_level(logging.INFO, logger="engine.progress")
    logger = logging.getLogger("engine.progress")
    with progress.Progress(logger, "work", 10, "steps", every_s=5.0) as p:
        for t in (1, 2, 6, 7, 12, 13):
            now[0] = t
            p.advance(note=f"at {t}")
    assert [r.getMessage() for r in caplog.records] == [
        "work: 3/10 steps, at 6 (6 s)", "work: 5/10 steps, at 12 (12 s)", "work: 6/10 steps (13 s)"]
    caplog.clear()
    now[0] = 0.0
    assert list(progress.tracked(range(3), logger, "short work")) == [0, 1, 2] and caplog.records == []


# ------------------------------------------------------------------------------------------------ the label
SHIPPED = [("evaluate", "--digits", []), ("train-classifier", "--labels", ["--out", "x"]),
           ("train-score", "--labels", ["--checkpoint", "x"])]


@pytest.mark.parametrize("command,old,required", SHIPPED)
def test_a_shipped_label_option_still_works_warns_once_and_means_digit(monkeypatch, capsys, command, old, required):
    seen = []
    monkeypatch.setitem(cli.COMMANDS, command.replace("-", "_"), lambda args: seen.append(args.digit) or 0)
    assert main([command, *required, old, "1", old, "7"]) == 0
    assert capsys.readouterr().err == f"tapdiff: warning: {old} is deprecated: use --digit\n"
    for new in (["--digit", "1", "--digit", "7"], ["--digit", "1,7"]):
        assert main([command, *required, *new]) == 0
        assert capsys.readouterr().err == ""
    assert seen == [(1, 7)] * 3
    with pytest.raises(SystemExit) as e:
        main([command, *required, old, "1", "--digit", "7"])
    last = capsys.readouterr().err.splitlines()[-1]
    assert e.value.code == 2 and old in last and "--digit" in last, last


def test_every_command_with_a_label_spells_it_digit():
    from engine.cli_parser import build_parser, subcommands

    label_options = ("--digit", "--digits", "--labels")
    spelled = {" ".join(path): [o for a in p._actions for o in a.option_strings if o in label_options]
               for path, p in subcommands(build_parser())}
    assert {k: v for k, v in spelled.items() if v} == {
        "generate": ["--digit"], "train-classifier": ["--digit", "--labels"],
        "train-score": ["--digit", "--labels"], "evaluate": ["--digit", "--digits"]}


def test_evaluate_digits_generates_the_clips_digit_does(tiny_checkpoint, fsdd_root, tmp_path, capsys):
    common = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(fsdd_root), "-n", "2", "--nfe", "2",
              "--backend", "torch"]
    for spelling, folder in (("--digits", "old"), ("--digit", "new")):
        assert main([*common, spelling, "7", "--save-audio", str(tmp_path / folder)]) == 0
    old, new = (sorted((tmp_path / f).rglob("*.wav")) for f in ("old", "new"))
    assert [p.name for p in old] == [p.name for p in new] == ["7_0.wav", "7_1.wav"]
    assert [p.read_bytes() for p in old] == [p.read_bytes() for p in new]


def test_labels_keyword_is_a_deprecated_spelling_of_digit(tiny_checkpoint):
    from engine.api import Engine
    from engine.batching import Batcher

    engine = Engine(tiny_checkpoint, backend="torch")
    want = engine.generate(digit=[7, 1], n=1, nfe=2, seed=3).mels
    with Batcher(engine, max_batch=4, max_delay_ms=0) as batcher:
        calls = {"generate": lambda **k: engine.generate(**k).mels,
                 "generate_chunks": lambda **k: torch.cat([g.mels for g in engine.generate_chunks(**k)]),
                 "Batcher.submit": lambda **k: batcher.submit(**k).result(timeout=120).mels}
        for name, call in calls.items():
            with pytest.warns(DeprecationWarning, match="labels= is deprecated; use digit=") as caught:
                got = call(labels=[7, 1], n=1, nfe=2, seed=3)
            assert len([w for w in caught if issubclass(w.category, DeprecationWarning)]) == 1, name
            assert torch.equal(got, want), name
            assert torch.equal(call(digit=[7, 1], n=1, nfe=2, seed=3), want), name
    with pytest.warns(DeprecationWarning):
        assert engine.request_clips(labels=7, n=2, guidance=3.0, seed=0) == engine.request_clips(7, 2, 3.0, 0)
    for both in (lambda: engine.generate(digit=7, labels=7), lambda: engine.generate(7, labels=7),
                 lambda: engine.request_clips(7, 1, 3.0, 0, labels=7)):
        with pytest.raises(TypeError, match=r"both digit= and labels="):
            both()
