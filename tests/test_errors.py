"""Every error the engine raises on purpose is a TapdiffError (engine/errors.py), and the CLI turns those, and only
those, into one line with exit status 2: anything else is a bug and keeps its traceback."""
import ast
import builtins
import importlib
import inspect
import socket
import sys
from pathlib import Path

import pytest

import engine.errors
from engine import cli
from engine.cli import main
from engine.errors import FileAccessError, TapdiffError
from engine.storage.atomic import atomic_write

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "export", "kernels")

# Builtins the engine no longer raises itself: each has a TapdiffError subclass in engine/errors.py that derives
# from it (InvalidInput, NotFinite, MissingDependency, FileAccessError, MissingFile, PortUnavailable).
REPLACED = {"ValueError", "FloatingPointError", "ImportError", "ModuleNotFoundError", "OSError", "IOError",
            "EnvironmentError", "FileNotFoundError", "PermissionError"}
# Where raising one of them is still right, and why:
# - code under ``if __name__ == "__main__":``: a script's own command line, not the engine;
# - an argparse ``type=`` converter: argparse turns its ValueError into a usage error (the usage, exit status 2);
# - a pydantic validator (a function decorated ``...validator``): pydantic turns its ValueError into a 422 naming
#   the field.


def _main_block_lines(tree: ast.Module) -> set[int]:
    return {line for node in tree.body
            if isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
            for line in range(node.lineno, node.end_lineno + 1)}


def _argparse_converters(tree: ast.Module) -> set[str]:
    return {kw.value.id for node in ast.walk(tree) if isinstance(node, ast.Call)
            for kw in node.keywords if kw.arg == "type" and isinstance(kw.value, ast.Name)}


def _is_pydantic_validator(fn: ast.FunctionDef) -> bool:
    def name(d):
        d = d.func if isinstance(d, ast.Call) else d
        return d.attr if isinstance(d, ast.Attribute) else getattr(d, "id", "")
    return any(name(d).endswith("validator") for d in fn.decorator_list)


def builtin_raises(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line builtin`` (the file relative to ``root``) for each raise of a REPLACED builtin in ``path``
    outside the allowed places."""
    tree = ast.parse(path.read_text())
    allowed_lines = _main_block_lines(tree)
    converters = _argparse_converters(tree)
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                fn.name in converters or _is_pydantic_validator(fn)):
            allowed_lines.update(range(fn.lineno, fn.end_lineno + 1))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None and node.lineno not in allowed_lines:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id in REPLACED:
                found.append(f"{path.relative_to(root)}:{node.lineno} {exc.id}")
    return found


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_the_engine_raises_its_own_errors_not_builtins():
    assert [hit for p in sources() for hit in builtin_raises(p)] == []


def test_the_scan_finds_a_builtin_raise_and_passes_the_allowed_places(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text('import argparse\n\n\ndef check(x):\n    raise ValueError("x")\n\n\n'
                    'def converter(text):\n    raise ValueError(text)\n\n\n'
                    'argparse.ArgumentParser().add_argument("--n", type=converter)\n\n\n'
                    '@field_validator("n")\ndef positive(cls, v):\n    raise ValueError("n")\n\n\n'
                    'if __name__ == "__main__":\n    raise OSError("usage")\n')
    assert builtin_raises(path, tmp_path) == ["probe.py:5 ValueError"]


def test_each_error_class_is_a_tapdiff_error_that_keeps_a_builtin_base():
    classes = [c for _, c in inspect.getmembers(engine.errors, inspect.isclass) if c.__module__ == "engine.errors"]
    assert len(classes) > 1
    for c in classes:
        assert issubclass(c, TapdiffError), c
        if c is not TapdiffError:  # so that ``except ValueError`` (or OSError, ...) written against it still works
            assert any(b.__module__ == "builtins" and b not in (Exception, BaseException, object)
                       for b in c.__mro__), c


def _exception_classes() -> dict[str, set[str]]:
    """module -> names of the exception classes it defines (subclasses of a builtin exception or of another one
    found here, by name), over engine/, export/ and kernels/."""
    known = {n for n in dir(builtins) if isinstance(getattr(builtins, n), type)
             and issubclass(getattr(builtins, n), BaseException)}
    trees = {".".join(p.relative_to(ROOT).with_suffix("").parts): ast.parse(p.read_text()) for p in sources()}
    found: dict[str, set[str]] = {}
    grew = True
    while grew:
        grew = False
        for mod, tree in trees.items():
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name not in found.get(mod, ()) and any(
                        (b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")) in known for b in node.bases):
                    found.setdefault(mod, set()).add(node.name)
                    known.add(node.name)
                    grew = True
    return found


def test_every_exception_class_the_engine_defines_is_a_tapdiff_error():
    classes = _exception_classes()
    assert {"engine.errors", "engine.api", "engine.batching"} <= set(classes)
    for mod, names in classes.items():
        module = importlib.import_module(mod)
        for name in names:
            assert issubclass(getattr(module, name), TapdiffError), f"{mod}.{name}"


def _one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tapdiff: error: "), lines
    return lines[0]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_output_folder_that_cannot_be_made_is_one_line_before_any_work(capsys):
    assert "/proc/x" in _one_error_line(capsys, ["generate", "--out", "/proc/x"])


def test_a_missing_data_folder_is_one_line(capsys):
    # --classifier-accuracy reads --data without building an engine (export) first; plain evaluate gets the
    # same error from the same listing
    line = _one_error_line(capsys, ["evaluate", "--data", "/nonexistent", "--classifier-accuracy"])
    assert "/nonexistent does not exist" in line


def test_a_missing_checkpoint_is_one_line(capsys, tmp_path):
    line = _one_error_line(capsys, ["generate", "--checkpoint", "/nonexistent", "--out", str(tmp_path / "out")])
    assert "/nonexistent does not exist" in line


def test_a_taken_port_is_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_error_line(capsys, ["serve", "--host", "127.0.0.1", "--port", str(port)])
    assert f"cannot listen on 127.0.0.1:{port}" in line


def test_a_missing_optional_extra_is_one_line_naming_its_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as where the extra is not installed
    line = _one_error_line(capsys, ["serve", "--replicas", "2"])
    assert "pip install 'tapdiff[replicas]'" in line


def test_a_write_that_fails_names_the_file(tmp_path):
    def disk_full(tmp):
        raise OSError(28, "No space left on device")

    with pytest.raises(FileAccessError, match=r"cannot write .*out\.json: No space left on device"):
        atomic_write(tmp_path / "out.json", disk_full)


@pytest.mark.parametrize("bug", [ZeroDivisionError("division by zero"), ValueError("a plain one"), OSError("a plain one")])
def test_an_unexpected_error_is_not_swallowed(monkeypatch, tmp_path, bug):
    def run(args):
        raise bug

    monkeypatch.setitem(cli.COMMANDS, "generate", run)
    with pytest.raises(type(bug)):
        main(["generate", "--out", str(tmp_path)])
