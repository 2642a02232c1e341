"""CLI: does a frozen classifier carry over? tapdiff and the two-model pipeline under distribution shift (issue 26).

    python benchmarks/shift_study.py train --root runs/shift --workers 2       # the bundles (resumes)
    python benchmarks/shift_study.py table --root runs/shift --seeds 0,1 --cache runs/shift_rows.json \
        --out benchmarks/results/shift.md --json benchmarks/results/shift.json

Regimes (FSDD; the score networks of both systems always train and are judged on the regime's own data):

- speaker shift: the classifier trained on george, jackson and theo (Greek and US accents); the score networks
  on nicolas and yweweler (Belgian-French and German accents). Its control: the classifier trained on
  nicolas and yweweler themselves.
- condition shift: the classifier trained on clean speech (all five speakers); the score networks on the
  same speech reverberated (RT60 0.4 s, direct-to-reverberant 0 dB) and noisy (white noise at 10 dB SNR).
  Its control: the classifier trained on that noisy, reverberant speech.
- each shift again with only the classifier's normalisation layers fine-tuned on the shifted data
  (``tapdiff adapt-classifier``); ScoreSubnet is retrained on the adapted taps at the same budget, the
  U-Net (which reads no taps) is kept and guided by the adapted classifier.

Every classifier gets the same training seconds, every score network the same training seconds, one CPU
thread each (``OMP_NUM_THREADS=1``), so each run's steps are comparable. ``train`` runs each step's
``tapdiff`` command (the commands resume from their bundle's state/, so an interrupted study resumes) with
``--workers`` at a time, in dependency order. ``table`` judges every bundle with the standard evaluator
(the shipped bundle's, trained on clean speech of all five speakers) on the regime's real test clips, for
each seed, and the frozen classifier's accuracy on those clips.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

DATA = "../shared/data/fsdd"
SHIPPED = "engine/checkpoints/fsdd"
CLASSIFIER_SECONDS = 600
SCORE_SECONDS = 600
ADAPT_SECONDS = 150
SPEAKERS_SEEN = "george,jackson,theo"
SPEAKERS_NEW = "nicolas,yweweler"
CONDITION = ["--rt60", "0.4", "--noise-snr-db", "10"]


@dataclass(frozen=True)
class Regime:
    """One row group of the table: the bundle holding the classifier, and the data its score networks see."""
    name: str
    shift: str  # the shift this regime belongs to
    role: str  # "shift", "control" or "adapted"
    bundle: str
    score_data: tuple[str, ...]  # the regime flags of the score networks' (and the judge's) data
    classifier_data: tuple[str, ...] = ()  # the classifier's, where it trains one
    adapted_from: str = ""  # "adapted": the shift bundle whose classifier's normalisation is fine-tuned
    systems: tuple[str, ...] = ("tapdiff", "two-model")

    def describe_classifier(self) -> str:
        if self.adapted_from:
            return f"{self.adapted_from}'s, normalisation fine-tuned on the score data"
        return " ".join(self.classifier_data) or "all speakers, clean"


SPEAKER_DATA = ("--speakers", SPEAKERS_NEW)
CONDITION_DATA = tuple(CONDITION)
REGIMES = (
    Regime("speaker-shift", "speaker", "shift", "spk_seen", SPEAKER_DATA, ("--speakers", SPEAKERS_SEEN)),
    Regime("speaker-control", "speaker", "control", "spk_new", SPEAKER_DATA, SPEAKER_DATA),
    Regime("speaker-adapted", "speaker", "adapted", "spk_seen_adapted", SPEAKER_DATA, adapted_from="spk_seen"),
    Regime("condition-shift", "condition", "shift", "clean", CONDITION_DATA, ()),
    Regime("condition-control", "condition", "control", "noisy", CONDITION_DATA, CONDITION_DATA),
    Regime("condition-adapted", "condition", "adapted", "clean_adapted", CONDITION_DATA, adapted_from="clean"),
)


@dataclass
class Step:
    name: str
    argv: list[str]
    after: list[str] = field(default_factory=list)


def tapdiff(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli", *args]


def copy_sampling(root: Path, bundle: str) -> None:
    """The shipped bundle's sampling defaults (solver, steps, vocoder), without its students' entries, so every
    regime samples the way the shipped engine does."""
    from engine.storage.checkpoint import read_config, update_config

    sampling = dict(read_config(SHIPPED)["sampling"])
    sampling.pop("models", None)
    update_config(root / bundle, {"sampling": sampling})


def steps(root: Path) -> list[Step]:
    out: list[Step] = []
    for r in REGIMES:
        b = str(root / r.bundle)
        if r.adapted_from:
            out.append(Step(f"{r.bundle}/classifier",
                            tapdiff("adapt-classifier", "--data", DATA, "--checkpoint", str(root / r.adapted_from),
                                    "--out", b, "--seconds", str(ADAPT_SECONDS), *r.score_data),
                            after=[f"{r.adapted_from}/classifier", f"{r.adapted_from}/two-model"]))
        elif not any(s.name == f"{r.bundle}/classifier" for s in out):
            out.append(Step(f"{r.bundle}/classifier",
                            tapdiff("train-classifier", "--data", DATA, "--out", b, "--seconds",
                                    str(CLASSIFIER_SECONDS), *r.classifier_data)))
        systems = ("tapdiff",) if r.adapted_from else r.systems  # the adapted bundle keeps the U-Net it copied
        for system in systems:
            out.append(Step(f"{r.bundle}/{system}",
                            tapdiff("train-score", "--data", DATA, "--checkpoint", b, "--model", system,
                                    "--seconds", str(SCORE_SECONDS), "--snapshot-every", str(SCORE_SECONDS),
                                    *r.score_data),
                            after=[f"{r.bundle}/classifier"]))
    return out


def run_steps(root: Path, workers: int, log_dir: Path) -> int:
    todo = steps(root)
    done_dir = root / "done"
    done_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    marker = lambda s: done_dir / (s.name.replace("/", "__") + ".json")  # noqa: E731
    finished = {s.name for s in todo if marker(s).exists()}
    running: set[str] = set()
    failed: list[str] = []
    lock = threading.Condition()

    def work(step: Step) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": "."}
        t0 = time.monotonic()
        with open(log_dir / (step.name.replace("/", "__") + ".log"), "a") as log:
            log.write(f"$ {shlex.join(step.argv)}\n")
            log.flush()
            rc = subprocess.call(step.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        if rc == 0 and step.name.endswith("/classifier"):
            copy_sampling(root, step.name.split("/")[0])
        with lock:
            running.discard(step.name)
            if rc == 0:
                marker(step).write_text(json.dumps({"command": shlex.join(step.argv[2:]),
                                                    "wall_s": round(time.monotonic() - t0, 1)}))
                finished.add(step.name)
            else:
                failed.append(f"{step.name} (exit {rc})")
            lock.notify_all()

    with lock:
        while True:
            pending = [s for s in todo if s.name not in finished and s.name not in running]
            if failed or (not pending and not running):
                break
            ready = [s for s in pending if all(a in finished for a in s.after)]
            while ready and len(running) < workers:
                s = ready.pop(0)
                running.add(s.name)
                print(f"{time.strftime('%H:%M:%S')} start {s.name}", flush=True)
                threading.Thread(target=work, args=(s,), daemon=True).start()
            lock.wait()
        while running:
            lock.wait()
    for f in failed:
        print(f"failed: {f} (see {log_dir})", file=sys.stderr)
    print(f"{time.strftime('%H:%M:%S')} {len(finished)}/{len(todo)} steps done", flush=True)
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train", help="train every regime's bundle (resumes)")
    t.add_argument("--root", default="runs/shift")
    t.add_argument("--workers", type=int, default=2, help="commands at once (one CPU thread each)")
    t.add_argument("--list", action="store_true", help="print the commands instead")
    args = p.parse_args()
    root = Path(args.root)
    if args.what == "train":
        if args.list:
            for s in steps(root):
                print(shlex.join(["tapdiff", *s.argv[3:]]))
            return 0
        return run_steps(root, args.workers, root / "logs")
    return 2


if __name__ == "__main__":
    sys.exit(main())
