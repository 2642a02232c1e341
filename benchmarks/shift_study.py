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
thread each (``OMP_NUM_THREADS=1``); the steps those seconds buy follow the machine's load, and the table
shows each run's. ``train`` runs each step's
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
from typing import Callable

DATA = "../shared/data/fsdd"
SHIPPED = "engine/checkpoints/fsdd"
CLASSIFIER_SECONDS = 600
SCORE_SECONDS = 600
ADAPT_SECONDS = 150
SPEAKERS_SEEN = "george,jackson,theo"
SPEAKERS_NEW = "nicolas,yweweler"


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
        described = regime_of(self.classifier_data).describe()
        return described if self.classifier_data else f"{described}, clean"


SPEAKER_DATA = ("--speakers", SPEAKERS_NEW)
CONDITION_DATA = ("--rt60", "0.4", "--noise-snr-db", "10")
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
    on_success: Callable[[], None] | None = None  # run by the driver once the command has succeeded


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
                                    str(CLASSIFIER_SECONDS), *r.classifier_data),
                            on_success=lambda bundle=r.bundle: copy_sampling(root, bundle)))
        systems = ("tapdiff",) if r.adapted_from else r.systems  # the adapted bundle keeps the U-Net it copied
        for system in systems:
            out.append(Step(f"{r.bundle}/{system}",
                            tapdiff("train-score", "--data", DATA, "--checkpoint", b, "--model", system,
                                    "--seconds", str(SCORE_SECONDS), "--snapshot-every", str(SCORE_SECONDS),
                                    *r.score_data),
                            after=[f"{r.bundle}/classifier"]))
    return out


def run_steps(todo: list[Step], root: Path, workers: int, log_dir: Path) -> int:
    """Run ``todo`` with ``workers`` commands at once, each once every step it names in ``after`` has succeeded;
    a step that succeeded leaves a marker in ROOT/done/ and is not run again. The first failure stops new starts
    (running ones finish); exit status 1 then."""
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
        if rc == 0 and step.on_success is not None:
            try:
                step.on_success()
            except Exception as e:  # noqa: BLE001 - reported as the step's failure, never a hung driver
                print(f"{step.name}: after the command: {type(e).__name__}: {e}", file=sys.stderr)
                rc = 1
        with lock:
            running.discard(step.name)
            if rc == 0:
                marker(step).write_text(json.dumps({"command": shlex.join(["tapdiff", *step.argv[3:]]),
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


def regime_of(flags: tuple[str, ...]):
    """The DataRegime the CLI builds from these flags (one parser: the CLI's own)."""
    from engine.cli import _regime
    from engine.cli_parser import build_parser

    return _regime(build_parser().parse_args(["evaluate", *flags]))


def training_record(config: dict, name: str) -> dict:
    t = config.get("training", {}).get(name, {})
    return {"seconds": t.get("seconds"), "steps": t.get("steps")}


def judge_rows(root: Path, seeds: list[int], per_digit: int, cache_path: str | None) -> list[dict]:
    """Every regime and system: quality per seed (the standard evaluator, the regime's real test clips), the frozen
    classifier's accuracy on those clips, and the training records."""
    from report import cache_key, load_cache, save_cache

    from engine.api import Engine
    from engine.bundle import load_bundle
    from engine.evaluation.quality import QualityJudge, classifier_accuracy, evaluate_quality
    from engine.models.registry import score_network_kind

    cache = load_cache(cache_path)
    evaluator = load_bundle(SHIPPED, model=None, need_evaluator=True)
    rows, judges = [], {}
    for r in REGIMES:
        bundle_dir = root / r.bundle
        if not (bundle_dir / "config.json").exists():
            print(f"skip {r.name}: {bundle_dir} not trained", file=sys.stderr)
            continue
        regime = regime_of(r.score_data)
        bundle = load_bundle(bundle_dir, model=None)
        config = bundle.config
        acc_key = cache_key("classifier-accuracy", bundle.weights_sha256("classifier"), regime.describe())
        if acc_key not in cache:
            cache[acc_key] = classifier_accuracy(bundle, DATA, None, regime)
            save_cache(cache_path, cache)
        if r.score_data not in judges:
            judges[r.score_data] = QualityJudge(evaluator, DATA, bundle.labels, regime)
        judge = judges[r.score_data]
        clf = config["training"].get("classifier_adaptation") or config["training"]["classifier"]
        for system in r.systems:
            kind = score_network_kind(system)
            if f"{kind.weights}.safetensors" not in config.get("files", {}):
                print(f"skip {r.name}/{system}: not trained", file=sys.stderr)
                continue
            engine = Engine(bundle_dir, model=system, backend="torch")
            per_seed = {}
            for seed in seeds:
                key = cache_key("shift", str(bundle_dir.resolve()), system, bundle.weights_sha256(kind.weights),
                                bundle.weights_sha256("classifier"), regime.describe(), per_digit, seed)
                if key not in cache:
                    report = evaluate_quality(engine, judge, per_digit, 3.0, seed)
                    cache[key] = {"recognised": report.recognised, "fd": report.fd, "sampler": report.sampler,
                                  "nfe": report.nfe}
                    save_cache(cache_path, cache)
                per_seed[seed] = cache[key]
            own = config["training"][kind.weights]
            rows.append({"regime": r.name, "shift": r.shift, "role": r.role, "system": system,
                         "classifier": r.describe_classifier(), "score_data": regime.describe(),
                         "per_seed": per_seed, "fd_floor": judge.floor, "real_recognised": judge.real_recognised, "real_clips": judge.real_clips,
                         "classifier_accuracy": cache[acc_key],
                         "classifier_training": {"seconds": clf.get("seconds"), "steps": clf.get("steps")},
                         "score_training": {"seconds": own.get("seconds"), "steps": own.get("steps"),
                                            "from": "the shift bundle" if r.adapted_from and system != "tapdiff"
                                            else "this bundle"}})
            print(json.dumps({k: rows[-1][k] for k in ("regime", "system", "per_seed")}), flush=True)
    return rows


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and half the range over seeds (with two seeds: half their difference)."""
    return sum(values) / len(values), (max(values) - min(values)) / 2


def render(rows: list[dict], seeds: list[int], per_digit: int, root: Path) -> str:
    from report import header

    lines = [header(__file__),
             f"Guided (gamma 3) clips, {per_digit} per digit and seed, seeds {', '.join(map(str, seeds))}, each system's "
             "solver as shipped (Euler ancestral, 15 evaluations); recognised fraction and FD judged by the standard "
             "evaluation classifier (the shipped bundle's, trained on clean speech of all five speakers) on re-analysed "
             "audio, against the real test clips of the regime's own data (FD floor: two halves of those clips; real clips "
             "recognised: the evaluator on those real clips, the ceiling of the recognised fraction where it is unsure). "
             "± is half the range over seeds. Classifier accuracy: the frozen (or adapted) classifier on those test "
             "clips at x_t = x_0 + sigma n.",
             "",
             "| regime | system | classifier trained on | score data | recognised | real clips recognised | FD | FD floor | "
             "classifier acc. sigma 0 / 1 / 5 | classifier s / steps | score net s / steps |",
             "|---|---|---|---|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        rec = spread([v["recognised"] for v in r["per_seed"].values()])
        fd = spread([v["fd"] for v in r["per_seed"].values()])
        acc = r["classifier_accuracy"]
        ct, st = r["classifier_training"], r["score_training"]
        lines.append(f"| {r['regime']} | {r['system']} | {r['classifier']} | {r['score_data']} | "
                     f"{rec[0]:.3f} ± {rec[1]:.3f} | {r['real_recognised']:.3f} | {fd[0]:.1f} ± {fd[1]:.1f} | {r['fd_floor']:.1f} | "
                     f"{acc['0']:.2f} / {acc['1']:.2f} / {acc['5']:.2f} | {ct['seconds']:.0f} / {ct['steps']} | "
                     f"{st['seconds']:.0f} / {st['steps']}{' (' + st['from'] + ')' if st['from'] != 'this bundle' else ''} |")
    lines += ["", "## tapdiff's lead over the two-model pipeline, per regime", "",
              "| regime | recognised: tapdiff - two-model | FD: two-model - tapdiff |", "|---|---:|---:|"]
    by = {(r["regime"], r["system"]): r for r in rows}
    for name in dict.fromkeys(r["regime"] for r in rows):
        if (name, "tapdiff") in by and (name, "two-model") in by:
            t, u = by[name, "tapdiff"]["per_seed"], by[name, "two-model"]["per_seed"]
            common = sorted(set(t) & set(u))
            d_rec = spread([t[s]["recognised"] - u[s]["recognised"] for s in common])
            d_fd = spread([u[s]["fd"] - t[s]["fd"] for s in common])
            lines.append(f"| {name} | {d_rec[0]:+.3f} ± {d_rec[1]:.3f} | {d_fd[0]:+.1f} ± {d_fd[1]:.1f} |")
    lines += ["", "## The bundles' training commands", "",
              f"Run in this order by `python benchmarks/shift_study.py train --root ROOT` (ROOT here: `{root}`), each on "
              "one CPU thread, two at a time; every bundle's config.json records its own command, steps and seconds.",
              "", "```bash", *(shlex.join(["tapdiff", *s.argv[3:]]) for s in steps(root)), "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train", help="train every regime's bundle (resumes)")
    t.add_argument("--root", default="runs/shift")
    t.add_argument("--workers", type=int, default=2, help="commands at once (one CPU thread each)")
    t.add_argument("--list", action="store_true", help="print the commands instead")
    j = sub.add_parser("table", help="judge every trained bundle and write the table")
    j.add_argument("--root", default="runs/shift")
    j.add_argument("--seeds", default="0,1")
    j.add_argument("-n", type=int, default=10, help="clips per digit and seed")
    j.add_argument("--cache", default=None, help="JSON file of finished rows, to resume an interrupted run")
    j.add_argument("--out", default=None)
    j.add_argument("--json", default=None)
    args = p.parse_args()
    root = Path(args.root)
    if args.what == "train":
        if args.list:
            for s in steps(root):
                print(shlex.join(["tapdiff", *s.argv[3:]]))
            return 0
        return run_steps(steps(root), root, args.workers, root / "logs")
    from report import emit, record

    record(__file__)  # provenance of the code that measures, before anything runs
    seeds = [int(v) for v in args.seeds.split(",")]
    rows = judge_rows(root, seeds, args.n, args.cache)
    emit(render(rows, seeds, args.n, root), args.out)
    if args.json:
        from engine.storage.atomic import atomic_write_bytes

        atomic_write_bytes(args.json, json.dumps({"record": record(__file__), "rows": rows}, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
