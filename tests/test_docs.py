"""The documentation: README.md stays short, every relative link in README.md and docs/*.md leads to a file
(and, for a Markdown target, to a heading) that exists, no page carries work history (issue, session or
pull-request numbers), and the Python examples call only what ``engine`` defines. Reads files only: no
engine import, no torch."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_LIMIT = 10_240  # bytes
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
HISTORY = [
    re.compile(r"\bissues? #?\d+", re.I),
    re.compile(r"\bsessions? #?\d+", re.I),
    re.compile(r"\b(?:PR|pull request) #?\d+", re.I),
]
HASH_REF = re.compile(r"#\d+\b")
UPSTREAM_REF = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")  # owner/repo right before "#N"


def _ids(pages):
    return [str(p.relative_to(ROOT)) for p in pages]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def links(page: Path) -> list[str]:
    """Link targets outside fenced code blocks."""
    return LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8")))


def history_markers(text: str) -> list[str]:
    found = [m.group(0) for pattern in HISTORY for m in pattern.finditer(text)]
    for m in HASH_REF.finditer(text):
        if not UPSTREAM_REF.search(text[:m.start()]):  # owner/repo#N is an upstream reference, not ours
            found.append(text[max(0, m.start() - 20):m.end()])
    return found


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size < README_LIMIT, f"README.md is {size} bytes; keep it under {README_LIMIT} and move detail to docs/"


def test_docs_exist():
    names = {p.name for p in PAGES}
    for page in ("how-it-works.md", "cli.md", "api.md", "serving.md", "training.md", "benchmarks.md", "gpu.md",
                 "security.md"):
        assert page in names, f"docs/{page} is missing"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_relative_links_resolve(page: Path):
    dead = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            dead.append(f"{target} (no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            dead.append(f"{target} (no heading #{anchor} in {file.relative_to(ROOT)})")
    assert not dead, f"{page.relative_to(ROOT)} links to what does not exist: {dead}"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_no_work_history(page: Path):
    found = history_markers(page.read_text(encoding="utf-8"))
    assert not found, f"{page.relative_to(ROOT)} carries work history: {found}"


def test_history_markers_themselves():
    assert history_markers("as issue 14 asked") and history_markers("in session 3") and history_markers("see #26")
    assert history_markers("Issues 4 and 5") and history_markers("PR #12")
    assert not history_markers("they overwrite each other (microsoft/onnxruntime#26996)")
    assert not history_markers("a [link](serving.md#determinism), `# 1. the classifier`, 2^63 - 1")


# The Python examples: every keyword they pass, and every method they call, exists in engine/.
CLASSES = {"Engine": ("engine/api.py", "engine"), "Batcher": ("engine/batching.py", "batcher")}


def _methods(cls: str) -> dict[str, set[str]]:
    source, _ = CLASSES[cls]
    tree = ast.parse((ROOT / source).read_text(encoding="utf-8"))
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls)
    out = {}
    for f in node.body:
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = f.args
            out[f.name] = {p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)} - {"self"}
    return out


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)


EXAMPLES = [p for p in PAGES if _python_blocks(p)]


@pytest.mark.parametrize("page", EXAMPLES, ids=_ids(EXAMPLES))
def test_python_examples_match_the_api(page: Path):
    assert page != README or _python_blocks(page), "README.md should show the Python API"
    methods = {cls: _methods(cls) for cls in CLASSES}
    variables = {var: cls for cls, (_, var) in CLASSES.items()}
    wrong = []
    for block in _python_blocks(page):
        for call in (n for n in ast.walk(ast.parse(block)) if isinstance(n, ast.Call)):
            f = call.func
            if isinstance(f, ast.Name) and f.id in CLASSES:
                cls, name = f.id, "__init__"
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in variables:
                cls, name = variables[f.value.id], f.attr
            else:
                continue
            if name not in methods[cls]:
                wrong.append(f"{cls}.{name} does not exist")
                continue
            unknown = {k.arg for k in call.keywords if k.arg} - methods[cls][name]
            if unknown:
                wrong.append(f"{cls}.{name} takes no {sorted(unknown)}")
    assert not wrong, f"{page.relative_to(ROOT)}'s Python example: {wrong}"
