"""Opening files that came from elsewhere (checkpoint folders, the artifact cache): only regular files, never
a FIFO, a device or a link that leaves the folder it was found in; read with a size limit; JSON parsed with a
nesting and an integer-length limit. Each refusal is a ``CheckpointError`` naming the file and the problem, so a
hostile folder is refused instead of hanging the engine (a FIFO blocks an open, /dev/zero never ends) or
exhausting its memory or stack."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from ..errors import CheckpointError, InvalidInput

MAX_JSON_BYTES = 16 << 20  # config.json with every training curve is ~1 MB
MAX_JSON_DEPTH = 64  # the deepest legitimate document nests under 10
MAX_INT_DIGITS = 30  # no legitimate integer here is longer (seeds are < 2^63, 19 digits)


def regular_file(path: str | os.PathLike, within: str | os.PathLike | None = None) -> Path:
    """``path`` if it is a regular file (after following links) that, when ``within`` is given, resolves inside that
    folder; else a ``CheckpointError`` naming it. The caller then opens it."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({type(e).__name__}: {e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path} is not a regular file (a FIFO, device or folder is never read)")
    if within is not None:
        real, folder = path.resolve(), Path(within).resolve()
        if folder != real.parent and folder not in real.parents:
            raise CheckpointError(f"{path} is a link to {real}, outside {folder}: refused")
    return path


def read_limited(path: str | os.PathLike, max_bytes: int, within: str | os.PathLike | None = None) -> bytes:
    """The bytes of regular file ``path`` if it holds at most ``max_bytes``."""
    path = regular_file(path, within)
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise CheckpointError(f"{path} is larger than {max_bytes} bytes: refused")
    return data


def _nesting(text: str) -> int:
    """The deepest bracket nesting of a JSON text (brackets inside strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidInput(f"an integer of {len(text)} digits")
    return int(text)


def parse_json(text: str, what: str | os.PathLike, max_depth: int = MAX_JSON_DEPTH):
    """``json.loads`` with a nesting limit (no RecursionError) and an integer-length limit; a ``CheckpointError``
    naming ``what`` otherwise."""
    if _nesting(text) > max_depth:
        raise CheckpointError(f"{what} nests deeper than {max_depth} levels: refused")
    try:
        return json.loads(text, parse_int=_bounded_int)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{what} is not valid JSON: {e}") from None


def load_json(path: str | os.PathLike, within: str | os.PathLike | None = None, max_bytes: int = MAX_JSON_BYTES):
    """The JSON document in regular file ``path`` (see ``read_limited``, ``parse_json``)."""
    data = read_limited(path, max_bytes, within)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path} is not UTF-8 text: {e}") from None
    return parse_json(text, path)
