"""Speech datasets as (log-Mel, label): FSDD folders and Speech Commands / SC09 folders.

FSDD: ``recordings/{digit}_{speaker}_{index}.wav`` (or the files directly in ``root``); official split:
index 0-4 test, 5-49 train. Speech Commands: ``<word>/<file>.wav`` with ``validation_list.txt`` and
``testing_list.txt``; SC09 keeps the ten digit words.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import FileAccessError, InvalidInput, MissingFile
from ..progress import tracked
from ..storage.config import DataRegime, FeatureConfig
from .corruption import corrupt
from .wav import read_wav
from .features import clip_features

logger = logging.getLogger(__name__)

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
SPLITS = ("train", "valid", "test")
# The Free Spoken Digit Dataset beside the repository, as this project's machines lay it out; every command
# that reads data takes another folder (FSDD, or Speech Commands / SC09) with --data.
DEFAULT_DATA = "../shared/data/fsdd"


@dataclass(frozen=True)
class Item:
    path: Path
    label: int
    speaker: str = ""  # FSDD: the name in the file name; Speech Commands: the file name's speaker hash


def _fsdd_dir(root: Path) -> Path | None:
    for d in (root / "recordings", root):
        if d.is_dir() and any(_FSDD_NAME.match(p.name) for p in d.iterdir()):
            return d
    return None


def list_fsdd(root: Path, split: str) -> list[Item]:
    d = _fsdd_dir(root)
    if d is None:
        raise MissingFile(f"{root}: no FSDD recordings ({{digit}}_{{speaker}}_{{index}}.wav) found")
    items = []
    for p in sorted(d.iterdir()):
        m = _FSDD_NAME.match(p.name)
        if not m:
            continue
        is_test = int(m.group(3)) < 5
        # FSDD has no official validation split; "valid" is the test split too.
        if (split == "train") != is_test:
            items.append(Item(p, int(m.group(1)), m.group(2)))
    return items


def list_speech_commands(root: Path, split: str) -> list[Item]:
    lists = {}
    for name, key in (("validation_list.txt", "valid"), ("testing_list.txt", "test")):
        f = root / name
        lists[key] = set(f.read_text().split()) if f.exists() else set()
    items = []
    for label, word in enumerate(DIGIT_WORDS):
        d = root / word
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.wav")):
            rel = f"{word}/{p.name}"
            which = "valid" if rel in lists["valid"] else "test" if rel in lists["test"] else "train"
            if which == split:
                items.append(Item(p, label, p.name.split("_")[0]))
    if not items:
        raise MissingFile(f"{root}: no Speech Commands digit folders (zero/ ... nine/) with WAV files")
    return items


def list_items(root: str | Path, split: str, labels: tuple[int, ...] | None = None,
               speakers: tuple[str, ...] = ()) -> list[Item]:
    """All clips of ``split`` under ``root`` (FSDD or Speech Commands layout), restricted to ``labels`` and to
    ``speakers`` (empty: all; a name the split does not hold is refused, naming those it does)."""
    if split not in SPLITS:
        raise InvalidInput(f"unknown split {split!r}; expected one of {SPLITS}")
    root = Path(root)
    if not root.is_dir():
        raise MissingFile(f"dataset folder {root} does not exist")
    try:
        items = list_fsdd(root, split) if _fsdd_dir(root) else list_speech_commands(root, split)
    except PermissionError as e:
        raise FileAccessError(f"dataset folder {root} cannot be read: {e}") from e
    if labels is not None:
        bad = [y for y in labels if not 0 <= y < 10]
        if bad:
            raise InvalidInput(f"unknown digit label(s) {bad}; labels are 0-9")
        items = [it for it in items if it.label in set(labels)]
    if speakers:
        known = sorted({it.speaker for it in items})
        unknown = sorted(set(speakers) - set(known))
        if unknown:
            shown = ", ".join(known[:12]) + (" ..." if len(known) > 12 else "")
            raise InvalidInput(f"unknown speaker(s) {unknown} in {root} ({split}); it has {shown}")
        items = [it for it in items if it.speaker in set(speakers)]
    return items


def data_hash(items: list[Item]) -> str:
    """sha256 over file names and contents: recorded with a checkpoint to say what it was trained on."""
    h = hashlib.sha256()
    # Keyed by folder/name: Speech Commands repeats file names across word folders.
    for key, it in sorted(((f"{i.path.parent.name}/{i.path.name}", i) for i in items), key=lambda t: t[0]):
        h.update(key.encode())
        h.update(it.path.read_bytes())
    return h.hexdigest()


@dataclass
class FeatureSet:
    """Un-normalised log-Mel windows of a split, with each clip's speech span in frames."""

    mels: torch.Tensor  # (N, n_mels, frames)
    labels: torch.Tensor  # (N,) int64
    spans: torch.Tensor  # (N, 2) int64: [first, last) frames holding speech

    def __len__(self) -> int:
        return len(self.labels)


def load_features(items: list[Item], cfg: FeatureConfig, progress: bool = False,
                  regime: DataRegime = DataRegime()) -> FeatureSet:
    """Log-Mel windows of ``items``, each clip's waveform corrupted by ``regime`` first (see its doc);
    ``progress``: log how far it is (``engine.progress``)."""
    if not items:
        raise InvalidInput("no clips to load")
    mels, labels, spans = [], [], []
    for it in tracked(items, logger, "features", unit="clips", enabled=progress):
        x, rate = read_wav(it.path)
        x = corrupt(x, rate, regime, it.path.name)
        mel, span = clip_features(x, rate, cfg)
        mels.append(mel)
        labels.append(it.label)
        spans.append(span)
    return FeatureSet(torch.stack(mels), torch.tensor(labels), torch.tensor(spans))


@dataclass(frozen=True)
class Normaliser:
    """Per-band affine normalisation fitted on the training split; stored with the checkpoint."""

    mean: torch.Tensor  # (n_mels,)
    std: torch.Tensor  # (n_mels,)

    @staticmethod
    def fit(mels: torch.Tensor) -> "Normaliser":
        mean = mels.mean(dim=(0, 2))
        std = mels.std(dim=(0, 2))
        # Bands above the source's Nyquist (8 kHz FSDD upsampled) sit at the log floor with tiny spread;
        # flooring their std keeps them from amplifying noise.
        std = torch.clamp(std, min=0.1 * float(std.median()))
        return Normaliser(mean, std)

    def normalise(self, mel: torch.Tensor) -> torch.Tensor:
        return (mel - self.mean[:, None]) / self.std[:, None]

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std[:, None] + self.mean[:, None]


def silence_frame(norm: Normaliser, log_floor: float) -> torch.Tensor:
    return norm.normalise(torch.full((norm.mean.numel(), 1), float(torch.log(torch.tensor(log_floor)))))[:, 0]


def shift_in_time(x: torch.Tensor, spans: torch.Tensor, silence: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Time-shift augmentation: move each clip's speech to a random offset within its window.

    x: (B, n_mels, T) normalised; silence: (n_mels,) the normalised log-floor frame used as fill.
    """
    B, _, T = x.shape
    out = silence[None, :, None].expand(B, -1, T).clone()
    length = spans[:, 1] - spans[:, 0]
    room = (T - length).clamp(min=0)
    offsets = (torch.rand(B, generator=generator) * (room + 1).float()).long().clamp(max=room)
    for b in range(B):
        s, n, o = int(spans[b, 0]), int(length[b]), int(offsets[b])
        out[b, :, o:o + n] = x[b, :, s:s + n]
    return out
