"""Every error the engine raises on purpose, in one leaf module that any layer may import. Each names what
went wrong in its message; ``tapdiff`` turns all of them into one line and exit status 2.

``TapdiffError`` is the base of them all (and of the few defined beside the code that raises them:
``engine.api.FadeNotBuilt``, ``engine.batching.BatcherClosed`` and ``RequestCancelled``), so a caller can catch
everything the engine raises on purpose in one clause, and anything else is a bug. Each also derives from the
builtin a caller would expect (``ValueError``, ``OSError``, ``RuntimeError``...), so an ``except ValueError``
written against it still catches it."""
from __future__ import annotations


class TapdiffError(Exception):
    """Base of every error the engine raises on purpose."""


class InvalidInput(TapdiffError, ValueError):
    """An argument, value, configuration or file content the engine refuses (named, with what it accepts)."""


class NotFinite(TapdiffError, FloatingPointError):
    """A computation that produced NaN or inf: a training loss that diverged, sampled clips that are not finite."""


class MissingDependency(TapdiffError, ModuleNotFoundError):
    """An optional package that is not installed (an extra such as serve or replicas, onnxruntime, TensorRT),
    named with how to install it."""


class FileAccessError(TapdiffError, OSError):
    """A file or folder that cannot be read or written, named with the system's reason (no permission, a full
    disk, a folder that cannot be created)."""


class MissingFile(FileAccessError, FileNotFoundError):
    """A file or folder that does not exist, or holds none of the files it should."""


class PortUnavailable(TapdiffError, OSError):
    """A host and port the server cannot listen on: taken, not allowed, or an address this machine lacks."""


class CheckpointError(TapdiffError, RuntimeError):
    """A checkpoint that is missing, corrupt, or does not fit the model it is loaded into."""


class BackendError(TapdiffError, RuntimeError):
    """A backend that cannot run here as asked: no GPU, a provider that onnxruntime lacks or fell back from,
    a precision the installed TensorRT cannot build, a graph or plan TensorRT cannot parse, build, load or run."""


class OutputFolderError(TapdiffError, ValueError):
    """An output folder that cannot be written: it names a file, lies under a file, or is not writable."""


class AudioFileError(TapdiffError, ValueError):
    """An audio file that cannot be read as PCM WAV (named in the message)."""


class VocoderCacheError(TapdiffError, ValueError):
    """A vocoder cache folder whose config or weights are corrupt, replaced or unreadable."""


class VocoderMissing(VocoderCacheError, MissingFile):
    """A vocoder cache folder without its config or weights."""
