"""Which TensorRT names the project's code uses, and whether each use that not every checked TensorRT version
has is guarded by a feature test: read with ``ast``, nothing imported or run.

In every project file that imports TensorRT: the attribute names used on the ``tensorrt`` module and on objects
that come from it (``trt.BuilderFlag.FP16``, ``config.set_memory_pool_limit``), the keyword arguments of calls on
them, and the names in ``hasattr`` / ``getattr`` feature tests. What counts as a TensorRT object is followed
through assignments, ``self.x`` attributes, containers filled with them, calls of module functions, and
annotations rooted at ``trt`` (``engine: trt.ICudaEngine``, ``-> trt.IExecutionContext``).

Rules (``check``): a name no checked version has fails. A name one version lacks must be listed in the module's
``VERSION_SPECIFIC`` table with its guard, and every use must be guarded: a ``hasattr(obj, name)`` /
``getattr(obj, name, default)`` feature test itself, or code inside ``if guard(...)`` / ``if hasattr(..,
name)``, or after ``if not guard(...): raise`` (or return) in the same block; the guard function must itself
be a feature test. The per-version name lists come from ``export.tensorrt_names``; ``tests/test_tensorrt_names.py``
runs the check on the project and on synthetic sources.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("engine", "export", "kernels", "benchmarks")

OBJ, CONTAINER = "obj", "container"


@dataclass(frozen=True)
class Use:
    name: str
    file: str
    line: int
    guards: frozenset[str]
    feature_test: bool = False


@dataclass
class SourceReport:
    file: str
    uses: list[Use] = field(default_factory=list)
    table: dict[str, str] = field(default_factory=dict)
    guard_functions: set[str] = field(default_factory=set)  # module functions that contain a feature test
    problems: list[str] = field(default_factory=list)


def _dotted(node) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _is_feature_call(node) -> tuple[str, ast.AST, str | None, bool] | None:
    """hasattr(obj, "n") / getattr(obj, "n"[, default]): (function, obj, name or None if not literal, has default)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr") \
            and len(node.args) >= 2:
        arg = node.args[1]
        name = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None
        return node.func.id, node.args[0], name, node.func.id == "hasattr" or len(node.args) == 3
    return None


class _Taint:
    """Which expressions hold TensorRT objects: names per function scope, ``x.y`` paths module-wide (for
    ``self.engines``), what module functions return."""

    def __init__(self, tree: ast.Module):
        self.tree = tree
        self.kinds: dict[ast.AST, dict[str, str]] = {tree: {}}  # scope -> name -> kind
        self.paths: dict[str, str] = {}
        self.returns: dict[str, str] = {}
        self.functions = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self.scope_of: dict[ast.AST, ast.AST] = {}
        self._scopes(tree, tree)
        self._solve()

    def _scopes(self, node, scope) -> None:
        for child in ast.iter_child_nodes(node):
            self.scope_of[child] = scope
            self._scopes(child, child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else scope)

    def kind(self, node) -> str | None:
        if isinstance(node, ast.Name):
            scope = self.scope_of.get(node, self.tree)
            return self.kinds.get(scope, {}).get(node.id) or self.kinds[self.tree].get(node.id)
        if isinstance(node, ast.Attribute):
            path = _dotted(node)
            if path is not None and path in self.paths:
                return self.paths[path]
            return OBJ if self.kind(node.value) == OBJ else None
        if isinstance(node, ast.Subscript):
            return OBJ if self.kind(node.value) in (OBJ, CONTAINER) else None
        if isinstance(node, ast.Call):
            func = node.func
            if _is_feature_call(node):
                return None
            if isinstance(func, ast.Attribute) and self.kind(func.value) == CONTAINER and func.attr in ("get", "pop", "setdefault"):
                return OBJ
            if self.kind(func) == OBJ:
                return OBJ
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            return OBJ if name == "_tensorrt" else self.returns.get(name)
        if isinstance(node, (ast.Dict, ast.DictComp)):
            values = node.values if isinstance(node, ast.Dict) else [node.value]
            return CONTAINER if any(self.kind(v) == OBJ for v in values) else None
        if isinstance(node, (ast.List, ast.Set)) and any(self.kind(e) == OBJ for e in node.elts):
            return CONTAINER
        return None

    def _annotation_is_trt(self, ann) -> bool:
        return ann is not None and any(isinstance(n, ast.Name) and self.kinds[self.tree].get(n.id) == OBJ
                                       for n in ast.walk(ann))

    def _bind(self, target, kind, scope) -> bool:
        """Record that ``target`` (assigned in ``scope``) holds ``kind``; True if that is news."""
        if kind is None:
            return False
        if isinstance(target, (ast.Name, str)):
            name = target if isinstance(target, str) else target.id
            kinds = self.kinds.setdefault(scope, {})
            if kinds.get(name) != kind:
                kinds[name] = kind
                return True
        elif isinstance(target, ast.Attribute):
            path = _dotted(target)
            if path is not None and self.paths.get(path) != kind:
                self.paths[path] = kind
                return True
        elif isinstance(target, ast.Subscript) and kind == OBJ:
            return self._bind(target.value, CONTAINER, scope)
        return False

    def _returns_obj(self, name: str) -> bool:
        if self.returns.get(name) == OBJ:
            return False
        self.returns[name] = OBJ
        return True

    def _solve(self) -> None:
        for node in ast.walk(self.tree):  # roots: import tensorrt [as x], from tensorrt import ...
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == "tensorrt":
                        self._bind(a.asname or a.name, OBJ, self.tree)
            elif isinstance(node, ast.ImportFrom) and node.module == "tensorrt":
                for a in node.names:
                    self._bind(a.asname or a.name, OBJ, self.tree)
        changed = True
        while changed:  # to a fixpoint: taint only grows
            changed = False
            for fn in self.functions.values():
                for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs:
                    if self._annotation_is_trt(a.annotation):
                        changed |= self._bind(a.arg, OBJ, fn)
                if self._annotation_is_trt(fn.returns):
                    changed |= self._returns_obj(fn.name)
            for node in ast.walk(self.tree):
                scope = self.scope_of.get(node, self.tree)
                if isinstance(node, (ast.Assign, ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
                    for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                        if isinstance(t, ast.Tuple) and isinstance(node.value, ast.Tuple):
                            for te, ve in zip(t.elts, node.value.elts):
                                changed |= self._bind(te, self.kind(ve), scope)
                        else:
                            changed |= self._bind(t, self.kind(node.value), scope)
                elif isinstance(node, ast.Return) and node.value is not None and self.kind(node.value) == OBJ:
                    if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        changed |= self._returns_obj(scope.name)
                elif isinstance(node, ast.Call):  # a module function (or self.method) called with TensorRT objects
                    func = node.func
                    method = isinstance(func, ast.Attribute) and _dotted(func.value) == "self"
                    fn = self.functions.get(func.id if isinstance(func, ast.Name) else func.attr if method else None)
                    if fn is None:
                        continue
                    params = [a.arg for a in fn.args.posonlyargs + fn.args.args][1 if method else 0:]
                    bound = list(zip(params, node.args)) + [(kw.arg, kw.value) for kw in node.keywords if kw.arg in params]
                    for param, arg in bound:
                        if self.kind(arg) == OBJ:
                            changed |= self._bind(param, OBJ, fn)


def _positive(test) -> set[str]:
    """Guards in force where ``test`` is true."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return set().union(*(_positive(v) for v in test.values))
    feature = _is_feature_call(test)
    if feature and feature[0] == "hasattr" and feature[2]:
        return {f"hasattr:{feature[2]}"}
    if isinstance(test, ast.Call) and isinstance(test.func, ast.Name):  # guard(...): a module function
        return {test.func.id}
    return set()


def _negative(test) -> set[str]:
    """Guards in force where ``test`` is false."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return _positive(test.operand)
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.Or):
        return set().union(*(_negative(v) for v in test.values))
    return set()


def _exits(body) -> bool:
    """The block never falls through to the statements after it (so they run only when its test was false)."""
    return bool(body) and isinstance(body[-1], (ast.Raise, ast.Return, ast.Continue, ast.Break))


class _Collector:
    """The TensorRT names a source file uses, each with the guards in force where it is used."""

    def __init__(self, source: str, filename: str):
        self.tree = ast.parse(source, filename)
        self.file = filename
        self.taint = _Taint(self.tree)
        self.report = SourceReport(filename)

    def run(self) -> SourceReport:
        if not self.taint.kinds[self.tree] and not any(
                isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "_tensorrt"
                for n in ast.walk(self.tree)):
            return self.report
        self._block(self.tree.body, frozenset())
        for node in self.tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "VERSION_SPECIFIC"
                                                    for t in node.targets):
                self.report.table = ast.literal_eval(node.value)
        for name, fn in self.taint.functions.items():
            if any((f := _is_feature_call(n)) and f[3] and self.taint.kind(f[1]) == OBJ for n in ast.walk(fn)):
                self.report.guard_functions.add(name)
        return self.report

    def _block(self, stmts, guards: frozenset[str]) -> None:
        for stmt in stmts:
            if isinstance(stmt, ast.If):
                self._expr(stmt.test, guards)
                self._block(stmt.body, guards | _positive(stmt.test))
                self._block(stmt.orelse, guards | _negative(stmt.test))
                if _exits(stmt.body):
                    guards = guards | _negative(stmt.test)
                elif stmt.orelse and _exits(stmt.orelse):
                    guards = guards | _positive(stmt.test)
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                for d in stmt.decorator_list:
                    self._expr(d, guards)
                if not isinstance(stmt, ast.ClassDef):
                    for a in stmt.args.posonlyargs + stmt.args.args + stmt.args.kwonlyargs:
                        if a.annotation is not None:
                            self._expr(a.annotation, frozenset())
                    if stmt.returns is not None:
                        self._expr(stmt.returns, frozenset())
                self._block(stmt.body, frozenset())  # guards do not cross into a function
            else:
                for _, value in ast.iter_fields(stmt):
                    items = value if isinstance(value, list) else [value]
                    stmt_lists = [v for v in items if isinstance(v, ast.stmt)]
                    if stmt_lists:
                        self._block(stmt_lists, guards)
                    for v in items:
                        if isinstance(v, ast.AST) and not isinstance(v, ast.stmt):
                            self._expr(v, guards)

    def _expr(self, node, guards: frozenset[str]) -> None:
        if isinstance(node, ast.IfExp):
            self._expr(node.test, guards)
            self._expr(node.body, guards | _positive(node.test))
            self._expr(node.orelse, guards | _negative(node.test))
            return
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
            seen = set(guards)
            for v in node.values:  # `hasattr(x, "n") and x.n`: later operands run only if earlier ones held
                self._expr(v, frozenset(seen))
                seen |= _positive(v)
            return
        feature = _is_feature_call(node)
        if feature and self.taint.kind(feature[1]) == OBJ:
            fname, obj, name, guarded = feature
            if name is None:
                self.report.problems.append(f"{self.file}:{node.lineno}: {fname}() on a TensorRT object with a "
                                            "name that is not a string literal cannot be checked")
            else:
                self.report.uses.append(Use(name, self.file, node.lineno, guards, feature_test=guarded))
            self._expr(obj, guards)
            for extra in node.args[2:]:
                self._expr(extra, guards)
            return
        if isinstance(node, ast.Attribute) and self.taint.kind(node.value) == OBJ:
            self.report.uses.append(Use(node.attr, self.file, node.lineno, guards))
        if isinstance(node, ast.Call) and self.taint.kind(node.func) == OBJ:
            for kw in node.keywords:
                if kw.arg is not None:
                    self.report.uses.append(Use(kw.arg, self.file, node.lineno, guards))
        for child in ast.iter_child_nodes(node):
            self._expr(child, guards)


def collect(source: str, filename: str = "<source>") -> SourceReport:
    return _Collector(source, filename).run()


def check(reports: list[SourceReport], indexes: dict) -> list[str]:
    """Every problem with the TensorRT names in ``reports`` against the per-version ``indexes``."""
    problems = [p for r in reports for p in r.problems]
    for r in reports:
        used = {u.name for u in r.uses}
        for name, guard in r.table.items():
            missing = [v for v, idx in indexes.items() if idx.lookup(name) is None]
            if not missing:
                problems.append(f"{r.file}: VERSION_SPECIFIC lists {name!r}, which every checked TensorRT has: remove it")
            if name not in used:
                problems.append(f"{r.file}: VERSION_SPECIFIC lists {name!r}, which the source does not use")
            if guard != "getattr" and guard not in r.guard_functions:
                problems.append(f"{r.file}: guard {guard!r} of {name!r} is not a function here that feature-tests "
                                "a TensorRT object (hasattr / getattr with a default)")
        for u in r.uses:
            where = f"{u.file}:{u.line}"
            lacking = [v for v, idx in indexes.items() if idx.lookup(u.name) is None]
            if len(lacking) == len(indexes):
                problems.append(f"{where}: TensorRT has no {u.name!r} in any checked version ({', '.join(indexes)})")
                continue
            if lacking:
                guard = r.table.get(u.name)
                if guard is None:
                    problems.append(f"{where}: {u.name!r} is missing from TensorRT {', '.join(lacking)}: guard it with a "
                                    "feature test and list it in the module's VERSION_SPECIFIC")
                elif not (u.feature_test or guard in u.guards or f"hasattr:{u.name}" in u.guards):
                    problems.append(f"{where}: {u.name!r} (missing from TensorRT {', '.join(lacking)}) is used outside "
                                    f"its guard {guard}")
    return problems


def tail_only(reports: list[SourceReport], indexes: dict) -> set[str]:
    return {u.name for r in reports for u in r.uses
            if any(idx.lookup(u.name) == "tail" for idx in indexes.values())}


def project_sources() -> list[Path]:
    """The project's Python files that import TensorRT (directly, or through export.tensorrt_build._tensorrt)."""
    found = []
    for d in SOURCE_DIRS:
        for path in sorted((ROOT / d).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            if any(isinstance(n, ast.Import) and any(a.name == "tensorrt" for a in n.names)
                   or isinstance(n, ast.ImportFrom) and (n.module == "tensorrt" or any(a.name == "_tensorrt" for a in n.names))
                   for n in ast.walk(tree)):
                found.append(path)
    return found
