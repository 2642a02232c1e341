"""The ``tapdiff`` console script: dispatch only (the parser is ``engine.cli_parser``). Each command calls the function that does the
job (``engine.api``, ``engine.training.workflows``, ``engine.evaluation``, ``engine.backends``,
``engine.serve``); every expected failure becomes one line on stderr and exit status 2 (``EXPECTED``). What a
command produces (file paths, JSON summaries, tables) is printed on stdout; everything else is logged, and shown
on stderr by ``engine.cli_logging`` at the level ``-v`` / ``-q`` chose.

Before the arguments are parsed only ``engine.cli_parser``, ``engine.cli_logging`` and ``engine.errors`` are
imported, none of which imports torch, so ``--help`` and usage errors stay quick; each command imports what it runs."""
from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path

from .cli_logging import logging_to_stderr
from .cli_parser import build_parser
from .errors import TapdiffError

logger = logging.getLogger("engine.cli")  # by name: under python -m engine.cli, __name__ is "__main__"

# What a command may fail with that is the user's to fix, printed as one line with exit status 2: everything the
# engine raises on purpose (engine.errors: bad values, missing or unwritable files, checkpoints, backends, optional
# packages not installed, a port that is taken, a run that diverged). Anything else is a bug and keeps its traceback.
EXPECTED = (TapdiffError,)


def _command(args) -> str:
    """The command line that produced an artifact, recorded beside it."""
    return "tapdiff " + " ".join(shlex.quote(a) for a in args.argv)


def _spec(engine, args):
    """The request's whole sampling spec (solver, steps, rho, guidance fade) from the sampling arguments."""
    return engine.sampler_spec(args.sampler, args.steps, args.nfe, rho=args.rho, fade_sigma=args.guidance_fade)


def _write_json(path, record: dict) -> None:
    from .storage.atomic import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())


def cmd_generate(args) -> int:
    started = time.monotonic()  # the clip-time line counts all the user waits for: imports, load, export too
    import io

    import numpy as np

    from .api import Engine
    from .audio.wav import wav_bytes
    from .distributed import distributed_shard, finish_group
    from .storage.atomic import StagedFolder, check_output_folder

    check_output_folder(args.out)  # before any work: a bad --out fails now, not after the whole generation
    engine = Engine(args.checkpoint, vocoder=args.vocoder, progress=True, model=args.model,
                    backend=args.backend, artifacts=args.artifacts, device=args.device,
                    batch_size=args.batch_size, batch_invariant=args.batch_invariant)
    shard = distributed_shard()
    loaded = time.monotonic()
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
    done = time.monotonic()
    logger.info(f"{sum(len(m) for m in mels)} clip(s) in {done - started:.1f} s (loading the engine "
                f"{loaded - started:.1f} s, a first use's export included; generating and writing "
                f"{done - loaded:.1f} s)")
    if shard is not None:
        finish_group()  # the request is written once every rank's shard is
    return 0


def _regime(args):
    from .storage.config import DataRegime

    return DataRegime(speakers=args.speakers, noise=args.noise_snr_db is not None,
                      snr_db=10.0 if args.noise_snr_db is None else args.noise_snr_db, rt60_s=args.rt60,
                      seed=args.corruption_seed)


def cmd_train_classifier(args) -> int:
    from .training.workflows import ClassifierRun, train_classifier_bundle

    print(json.dumps(train_classifier_bundle(ClassifierRun(
        args.out, args.data, args.digit, args.seconds, args.norm, args.frames, args.widths, args.sigma_min,
        args.batch_size, args.lr, args.seed, _command(args), _regime(args), args.max_steps))))
    return 0


def cmd_adapt_classifier(args) -> int:
    from .training.workflows import AdaptRun, adapt_classifier_bundle

    print(json.dumps(adapt_classifier_bundle(AdaptRun(
        args.checkpoint, args.out, args.data, args.seconds, args.batch_size, args.lr, args.ema, args.seed,
        _command(args), _regime(args), args.max_steps))))
    return 0


def cmd_train_score(args) -> int:
    from .training.workflows import ScoreRun, train_score_network

    summary = train_score_network(ScoreRun(
        args.checkpoint, args.data, args.model, args.seconds, args.widths, args.digit, args.batch_size, args.lr,
        args.ema, args.snapshot_every, args.heldout_clips, args.continue_training, args.seed, _command(args),
        _regime(args), args.max_steps))
    if summary is not None:
        print(json.dumps(summary))
    return 0


def cmd_distill(args) -> int:
    from .training.distill import TrajectorySettings
    from .training.workflows import DistillRun, distill_student

    if args.method == "dmd":
        from .training.dmd import DMDSettings
        from .training.workflows import DMDRun, distill_student_dmd

        settings = DMDSettings(steps=args.steps, batch_size=args.batch_size or DMDSettings.batch_size, generator_lr=args.generator_lr,
                               fake_lr=args.fake_lr, fake_updates=args.fake_updates, warmup=args.warmup,
                               ema=args.generator_ema, seed=args.seed, gan_weight=args.gan_weight,
                               recognition_weight=args.recognition_weight)
        from .bundle import load_bundle
        from .evaluation.quality import QualityJudge, student_curve_point

        evaluator = load_bundle(args.checkpoint, model=None, need_evaluator=True)
        judge = student_curve_point(QualityJudge(evaluator, args.data, evaluator.labels), args.eval_clips)
        summary = distill_student_dmd(DMDRun(args.checkpoint, args.model, args.seconds, args.max_generator_updates,
                                             settings, args.eval_every, args.data, _command(args),
                                             args.start_from), judge)
        print(json.dumps({k: v for k, v in summary.items() if k != "curve"}))
        return 0
    trajectories = TrajectorySettings(count=args.trajectories, steps=args.teacher_steps, seed=args.seed)
    print(json.dumps(distill_student(DistillRun(
        args.checkpoint, args.model, args.seconds, trajectories, args.held_out, args.steps, args.rho, args.batch_size or DistillRun.batch_size,
        args.lr, snapshot_every=args.snapshot_every, guided_taps=args.guided_taps,
        condition_lr_scale=args.condition_lr_scale, seed=args.seed, command=_command(args),
        max_steps=args.max_steps))))
    return 0


def cmd_train_evaluator(args) -> int:
    from .training.workflows import EvaluatorRun, train_evaluator

    print(json.dumps(train_evaluator(EvaluatorRun(args.checkpoint, args.data, args.epochs, args.seed, _command(args)))))
    return 0


def cmd_evaluate(args) -> int:
    from .api import Engine
    from .audio.datasets import list_items
    from .bundle import load_bundle
    from .evaluation.quality import QualityJudge, evaluate_quality
    from .provenance import run_record

    regime = _regime(args)
    if args.classifier_accuracy:
        from .evaluation.quality import classifier_accuracy

        report = {**run_record(_command(args)), "regime": regime.describe(),
                  "accuracy_by_sigma": classifier_accuracy(load_bundle(args.checkpoint, model=None), args.data,
                                                           args.digit, regime)}
        print(json.dumps(report["accuracy_by_sigma"]))
        if args.json:
            _write_json(args.json, report)
        return 0
    # the test clips are found before the Engine exists: a wrong --data is one line, not one after an export
    list_items(args.data, "test", tuple(args.digit) if args.digit else None, regime.speakers)
    engine = Engine(args.checkpoint, vocoder=args.vocoder, progress=True, model=args.model, backend=args.backend,
                    artifacts=args.artifacts, device=args.device)
    judge = QualityJudge(load_bundle(args.evaluator or args.checkpoint, model=None, need_evaluator=True), args.data,
                         args.digit or engine.labels, regime)
    spec = _spec(engine, args)
    reports = []
    for guidance in args.guidance:
        save = (lambda out, g=guidance: out.save(Path(args.save_audio) / f"guidance_{g:g}")) if args.save_audio else None
        reports.append(evaluate_quality(engine, judge, args.n, guidance, args.seed, spec, on_generation=save).to_dict())
        print(json.dumps(reports[-1]))
    if args.json:
        _write_json(args.json, {**run_record(_command(args)), "reports": reports})
    return 0


def cmd_warmup(args) -> int:
    from .api import Engine

    t0 = time.monotonic()
    engine = Engine(args.checkpoint, model=args.model, backend=args.backend, artifacts=args.artifacts,
                    device=args.device, batch_size=args.batch_size, fades=args.fades)
    built = engine.warmup()
    print(json.dumps({"engine": repr(engine), "fades": built, "seconds": round(time.monotonic() - t0, 2)}))
    return 0


def cmd_export(args) -> int:
    from .backends import export_artifacts

    for path in export_artifacts(args.checkpoint, args.model, args.out, args.max_batch, args.fp16, args.device):
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
    from .evaluation.bench import BenchConfig, load_targets, plot, render, run_bench
    from .provenance import markdown_header, run_record
    from .storage.atomic import atomic_write_bytes

    record = run_record(_command(args))  # the code that measures, before anything runs
    cfg = BenchConfig(models=args.models, backends=args.backends, batches=args.batch, guidances=args.guidance,
                      sampler=args.sampler, nfe=args.nfe, repeats=args.repeats, gen_repeats=args.gen_repeats,
                      memory=not args.no_memory, quality=args.quality, data=args.data, artifacts=args.artifacts,
                      reference=args.reference, device=args.device, vocoder=args.vocoder,
                      targets=load_targets(args.targets) if args.targets else [])
    result = run_bench(args.checkpoint, cfg)
    out = Path(args.out)
    _write_json(out / "bench.json", {**record, **result})
    text = render(result, markdown_header(record))
    atomic_write_bytes(out / "bench.md", text.encode())
    print(text)
    try:
        plot(result, out / "bench.png")
    except ImportError:
        logger.warning("no plot written: matplotlib is not installed (pip install 'tapdiff[plot]')")
    return 0


def cmd_memory(args) -> int:
    from .evaluation.memory.process_probe import RUNTIME_NAMES
    from .evaluation.memory.report import memory_report, write_report
    from .provenance import run_record

    record = run_record(_command(args))
    report = memory_report(args.checkpoint, args.models, args.batch, args.guidance, args.processes, args.threads,
                           runtimes=[RUNTIME_NAMES[r] for r in args.runtimes], artifacts=args.artifacts)
    print(write_report(args.out, record, report))
    return 0


def cmd_serve(args) -> int:
    from .api import Engine
    from .limits import Limits, ServerLimits
    from .serve import listening_socket, serve

    limits = ServerLimits(max_queued=args.max_queued, max_body_bytes=args.max_body_bytes,
                          body_timeout_s=args.body_timeout_s, request_timeout_s=args.request_timeout_s,
                          idle_timeout_s=args.idle_timeout_s)
    engine_kwargs = dict(checkpoint=args.checkpoint, model=args.model, backend=args.backend, artifacts=args.artifacts,
                         batch_size=args.max_batch, device=args.device,
                         limits=Limits(max_clips=args.max_clips, max_nfe=args.max_nfe),
                         batch_invariant=not args.batch_dependent, fades=args.fades)
    if args.replicas != 1:
        from .serve_replicas import serve_replicas

        serve_replicas(engine_kwargs, args.replicas, args.host, args.port, args.max_batch, args.max_delay_ms, limits,
                       args.threads, set(args.allowed_hosts) if args.allowed_hosts else None, args.log_level,
                       on_ready=_print_url)
        return 0
    sock = listening_socket(args.host, args.port)  # a taken port fails now, not after the engine has loaded
    with sock:
        engine = Engine(**engine_kwargs)
        engine.warmup()  # every graph built and run once before the server reports ready
        serve(engine, args.host, args.port, args.max_batch, args.max_delay_ms, limits,
              set(args.allowed_hosts) if args.allowed_hosts else None, sock, on_ready=_print_url)
    return 0


def _print_url(url: str) -> None:
    """The command's output: where it serves, on stdout (the log, on stderr, may be quieted with -q)."""
    print(url, flush=True)


def cmd_vocoder_import(args) -> int:
    from .audio.hifigan_import import import_vocoder

    print(import_vocoder(args.source, args.out, args.checkpoint, args.config))
    return 0


def cmd_vocoder_compare(args) -> int:
    from .evaluation.vocoder_compare import compare_vocoders, load_reference_clips, render_rows
    from .audio.vocoders import make_vocoder
    from .bundle import load_bundle
    from .evaluation.quality import QualityJudge
    from .provenance import run_record
    from .storage.checkpoint import DEFAULT_CHECKPOINT

    evaluator = load_bundle(args.evaluator or DEFAULT_CHECKPOINT, model=None, need_evaluator=True)
    judge = QualityJudge(evaluator, args.data, evaluator.labels)
    reference = load_reference_clips(args.data, args.clips, judge.features, judge.digits)
    vocoders = {name: make_vocoder(name, judge.features, args.hifigan_dir) for name in args.vocoders}
    rows = compare_vocoders(vocoders, reference, judge)
    print(f"copy synthesis of {reference.source}; in brackets: the even and odd halves")
    print(render_rows(rows))
    if args.json:
        _write_json(args.json, {**run_record(_command(args)), "clips": reference.source, "rows": rows})
    return 0


COMMANDS = {name.removeprefix("cmd_"): fn for name, fn in dict(globals()).items() if name.startswith("cmd_")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    run = COMMANDS[args.run]
    if getattr(args, "checkpoint", None) is None and args.command in ("evaluate", "export", "profile", "bench",
                                                                       "memory"):
        from .storage.checkpoint import DEFAULT_CHECKPOINT

        args.checkpoint = str(DEFAULT_CHECKPOINT)
    with logging_to_stderr(args.log_level):
        for line in getattr(args, "deprecations", ()):
            logger.warning(line)
        try:
            return run(args)
        except EXPECTED as e:
            print(f"tapdiff: error: {e}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
