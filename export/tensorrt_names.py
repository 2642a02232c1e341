"""The names TensorRT's Python bindings expose, read from the bindings wheels' bytes: no TensorRT install,
no GPU, nothing imported or run from the wheel.

TensorRT's bindings are a pybind11 extension, ``tensorrt_bindings/tensorrt.so`` in the PyPI wheel
``tensorrt-cu12-bindings`` (``import tensorrt`` re-exports it). Every class, method, property, argument and
enum value it binds is a NUL-terminated string literal in the extension's ``.rodata`` section, so the set
of identifier-looking strings there bounds what the bindings can expose. Two details:

- The linker merges a string into the tail of a longer one that ends with it ("Logger" is stored only as
  the end of "ILogger", ``precision`` as the end of ``reset_precision``). A name is therefore *present*
  when it is a whole string or the tail of one, and *exact* only when whole. Absence is proof that the
  bindings cannot expose a name; presence, exact or tail, is only evidence (the table is one per binary,
  not per class: ``FP8`` is present in 11.x as ``DataType.FP8`` although ``BuilderFlag.FP8`` is gone).
- ``tensorrt_bindings/__init__.py`` adds Python-level names (``__version__``, ``Logger.Severity``,
  ``nptype``...) and refers to bound classes by name; those names come from its source, read with ``ast``.

The lists (one per version, ``tests/data/tensorrt_names/tensorrt-<version>.txt``) are committed, so the
name check (``tests/test_tensorrt_names.py``) runs offline. Regenerate them with
``python -m export.tensorrt_names`` (downloads the wheels with ``pip download --no-deps``, about 1.2 MB
each) or ``python -m export.tensorrt_names --wheel-dir DIR`` (wheels already there); ``--check`` compares
instead of writing. What has run: this extraction, on the wheels of 10.13.3.9 and 11.4.0.106 (Linux x86-64,
CPython 3.11). What has not: TensorRT itself, anywhere in this project.
"""
from __future__ import annotations

import argparse
import ast
import builtins
import hashlib
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

from engine.errors import InvalidInput, MissingFile

VERSIONS = ("10.13.3.9", "11.4.0.106")
DATA_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "tensorrt_names"
WHEEL_CACHE = Path.home() / ".cache" / "tapdiff" / "tensorrt-wheels"
DISTRIBUTION = "tensorrt-cu12-bindings"
# The lists come from these wheels whatever interpreter regenerates them (the bytes of another CPython's or
# platform's build could differ slightly).
PYTHON_VERSION, PLATFORM = "3.11", "manylinux_2_28_x86_64"

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TAIL = re.compile(rb"[A-Za-z0-9_]+\Z")


def elf_section(data: bytes, wanted: str) -> bytes:
    """The bytes of section ``wanted`` of a little-endian ELF64 file (what the bindings wheels ship)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise InvalidInput("not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i):  # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size
        return struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)

    names_at, names_size = header(shstrndx)[4:6]
    names = data[names_at:names_at + names_size]
    for i in range(shnum):
        name_off, _, _, _, offset, size = header(i)
        if names[name_off:names.index(b"\0", name_off)].decode() == wanted:
            return data[offset:offset + size]
    raise InvalidInput(f"no {wanted} section")


def rodata_identifiers(so_bytes: bytes) -> set[str]:
    """Identifier-looking strings of the extension's read-only data: whole NUL-terminated strings, and the
    identifier at the end of any other string (a name the linker merged into a longer literal's tail)."""
    found = set()
    for chunk in elf_section(so_bytes, ".rodata").split(b"\0"):
        m = _TAIL.search(chunk)
        if m is None:
            continue
        tail = m.group().lstrip(b"0123456789").decode()
        if tail:
            found.add(tail)
    return found


def init_names(source: str) -> set[str]:
    """Names ``tensorrt_bindings/__init__.py`` adds or refers to: what it defines at module level, the
    attributes it assigns (``Logger.Severity = ...``) and the names it loads without binding them, which can
    only come from its ``from .tensorrt import *`` (builtins excepted)."""
    tree = ast.parse(source)
    defined, assigned_attrs, loaded, bound = set(), set(), set(), set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                defined.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            assigned_attrs.add(node.attr)
        elif isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
    star_imported = loaded - bound - set(dir(builtins))
    return {n for n in defined | assigned_attrs | star_imported if _IDENT.match(n)}


def wheel_names(wheel: str | Path) -> set[str]:
    """Every name the bindings in ``wheel`` could expose (see the module docstring)."""
    with zipfile.ZipFile(wheel) as z:
        members = z.namelist()
        so = [m for m in members if m.endswith("/tensorrt.so") or m.endswith("/tensorrt.pyd")]
        init = [m for m in members if m.count("/") == 1 and m.endswith("/__init__.py")]
        if len(so) != 1 or len(init) != 1:
            raise InvalidInput(f"{wheel}: expected one tensorrt.so and one top-level __init__.py, found {so} and {init}")
        return rodata_identifiers(z.read(so[0])) | init_names(z.read(init[0]).decode())


def wheel_name(version: str) -> str:
    return f"tensorrt_cu12_bindings-{version}-cp{PYTHON_VERSION.replace('.', '')}-none-{PLATFORM}.whl"


def find_wheel(version: str, wheel_dir: Path) -> Path | None:
    path = Path(wheel_dir) / wheel_name(version)
    return path if path.exists() else None


def download_wheel(version: str, wheel_dir: Path) -> Path:
    """The bindings wheel of ``version`` (CPython 3.11, manylinux_2_28 x86-64) in ``wheel_dir``, fetched with
    ``pip download --no-deps`` if absent."""
    wheel = find_wheel(version, wheel_dir)
    if wheel is None:
        wheel_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
                        "--python-version", PYTHON_VERSION, "--platform", PLATFORM, "-d", str(wheel_dir),
                        f"{DISTRIBUTION}=={version}"], check=True)
        wheel = find_wheel(version, wheel_dir)
        if wheel is None:
            raise MissingFile(f"pip downloaded no {DISTRIBUTION}=={version} wheel into {wheel_dir}")
    return wheel


def list_path(version: str, data_dir: Path = DATA_DIR) -> Path:
    return Path(data_dir) / f"tensorrt-{version}.txt"


def format_list(version: str, names: set[str], wheel: Path) -> str:
    digest = hashlib.sha256(Path(wheel).read_bytes()).hexdigest()
    header = [f"# Names the TensorRT {version} Python bindings could expose: identifier-looking strings of the .rodata",
              "# section of tensorrt_bindings/tensorrt.so (whole, or the identifier ending a longer string), plus the",
              "# names tensorrt_bindings/__init__.py defines or loads. A name used by tapdiff counts as present when",
              "# it is a line here or the end of one (the linker stores 'Logger' only inside 'ILogger').",
              f"# From {Path(wheel).name} (sha256 {digest}).",
              "# Regenerate: python -m export.tensorrt_names"]
    return "\n".join(header + sorted(names)) + "\n"


def read_list(path: str | Path) -> set[str]:
    lines = Path(path).read_text().splitlines()
    return {ln for ln in lines if ln and not ln.startswith("#")}


class NameIndex:
    """Membership of one version's names: ``exact`` (a whole string), ``tail`` (only the end of a longer
    one) or None (absent: the bindings cannot expose it)."""

    def __init__(self, names: set[str]):
        self.names = frozenset(names)
        self._suffixes = frozenset(n[i:] for n in names for i in range(1, len(n)))

    def lookup(self, name: str) -> str | None:
        if name in self.names:
            return "exact"
        return "tail" if name in self._suffixes else None


def committed_indexes(data_dir: Path = DATA_DIR) -> dict[str, NameIndex]:
    return {v: NameIndex(read_list(list_path(v, data_dir))) for v in VERSIONS}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("versions", nargs="*", default=list(VERSIONS))
    p.add_argument("--wheel-dir", type=Path, default=WHEEL_CACHE, help="where the wheels are, or are downloaded to")
    p.add_argument("--out", type=Path, default=DATA_DIR)
    p.add_argument("--check", action="store_true", help="compare with the lists in --out instead of writing them")
    args = p.parse_args(argv)
    stale = []
    for version in args.versions:
        wheel = download_wheel(version, args.wheel_dir)
        names = wheel_names(wheel)
        path = list_path(version, args.out)
        if args.check:
            have = read_list(path) if path.exists() else set()
            if have != names:
                stale.append(f"{path}: {len(names - have)} names missing, {len(have - names)} extra")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(format_list(version, names, wheel))
        sys.stdout.write(f"{path}: {len(names)} names from {wheel.name}\n")
    for line in stale:
        sys.stderr.write(f"{line}\n")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
