"""Every error the engine raises on purpose, in one leaf module that any layer may import. Each names what
went wrong in its message; ``tapdiff`` turns all of them into one line and exit status 2.

``TapdiffError`` is the base of them all (and of the few defined beside the code that raises them:
``engine.api.FadeNotBuilt``, ``engine.batching.BatcherClosed`` and ``RequestCancelled``), so a caller can catch
everything the engine raises on purpose in one clause. Each also keeps the builtin base it had, so an
``except ValueError`` or ``except RuntimeError`` written against it still catches it."""
from __future__ import annotations


class TapdiffError(Exception):
    """Base of every error the engine raises on purpose (not of the plain ValueErrors it raises for bad values)."""


class CheckpointError(TapdiffError, RuntimeError):
    """A checkpoint that is missing, corrupt, or does not fit the model it is loaded into."""


class BackendError(TapdiffError, RuntimeError):
    """A backend that cannot run here as asked: no GPU, a provider that onnxruntime lacks or fell back from,
    a precision the installed TensorRT cannot build."""


class OutputFolderError(TapdiffError, ValueError):
    """An output folder that cannot be written: it names a file, lies under a file, or is not writable."""


class AudioFileError(TapdiffError, ValueError):
    """An audio file that cannot be read as PCM WAV (named in the message)."""


class VocoderCacheError(TapdiffError, ValueError):
    """A vocoder cache folder whose config or weights are corrupt, replaced or unreadable."""


class VocoderMissing(VocoderCacheError, FileNotFoundError):
    """A vocoder cache folder without its config or weights."""
