"""The training commands as functions: what ``tapdiff train-classifier``, ``train-score`` and ``train-evaluator``
run, callable from benchmarks and other code with the same records written (EDM keeps its ``train.py``
apart from ``training/training_loop.py`` the same way). Each run is described by a frozen dataclass whose
``command`` is recorded beside the weights it produces."""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..audio.datasets import DEFAULT_DATA, Normaliser, data_hash, list_items, load_features, silence_frame
from ..bundle import load_bundle, normaliser_to_config
from ..diffusion.score_model import build_score_model, score_model
from ..diffusion.taps import TapExtractor
from ..distributed import distributed_shard, finish_group
from ..errors import InvalidInput
from ..models.registry import SCORE_NETWORKS, score_network_kind
from ..storage.atomic import make_folder
from ..storage.checkpoint import SAMPLING_DEFAULTS, read_config, save_weights, update_config, write_config
from ..storage.config import (ClassifierConfig, DataRegime, FeatureConfig, SDEConfig, TrainConfig, edm_sigma_max,
                              from_dict, to_dict)
from ..storage.state_file import legacy_state_error, state_path
from .classifier import accuracy_by_sigma, adapt_normalisation, normalisation_parameters, train_classifier
from .distill import (HeldOutDistillation, TrajectorySettings, batch_draw, condition_parameters, distillation_loss,
                      init_from_teacher, teacher_trajectories)
from .dmd import DMDSettings
from .loop import train_loop
from .evaluator import train_eval_classifier
from .heldout import (HELDOUT_MAX_CLIPS, HELDOUT_MIN_CLIPS, HELDOUT_SHARE, HeldOutDSM, affordable_clips, band_sigmas,
                      seconds_per_clip_level)
from .score import continuation, train_score

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierRun:
    out: str | Path
    data: str = DEFAULT_DATA
    labels: tuple[int, ...] = tuple(range(10))
    seconds: float = 1500.0
    norm: str = "affine"
    frames: int = 72
    widths: tuple[int, ...] = ClassifierConfig().widths
    sigma_min: float = 0.005
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    command: str = ""
    regime: DataRegime = DataRegime()  # speaker subset and corruption of the training and test clips
    max_steps: int = 10**9  # stop at this many optimiser steps, or at seconds, whichever comes first


def train_classifier_bundle(run: ClassifierRun) -> dict:
    """Train the noise-conditioned classifier into a new checkpoint folder (resuming from its state/); returns
    the summary printed by the CLI."""
    feats = FeatureConfig(frames=run.frames)
    items = list_items(run.data, "train", run.labels, run.regime.speakers)
    train = load_features(items, feats, progress=True, regime=run.regime)
    test = load_features(list_items(run.data, "test", run.labels, run.regime.speakers), feats, progress=True,
                         regime=run.regime)
    norm = Normaliser.fit(train.mels)
    x = norm.normalise(train.mels).flatten(1)
    # sigma_max from the largest pairwise distance (all clips up to 4000, a fixed random subset beyond)
    sub = x if len(x) <= 4000 else x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:4000]]
    sde = SDEConfig(sigma_min=run.sigma_min, sigma_max=edm_sigma_max(float(torch.cdist(sub, sub).max())),
                    sigma_data=round(float(x.std()), 4))
    model_cfg = ClassifierConfig(frames=feats.frames, norm=run.norm, n_mels=feats.n_mels, widths=run.widths,
                                 blocks=(0,) + (1,) * (len(run.widths) - 1))
    tcfg = TrainConfig(batch_size=run.batch_size, lr=run.lr, seconds=run.seconds, max_steps=run.max_steps, seed=run.seed, labels=run.labels)
    out = Path(run.out)
    model, log = train_classifier(train, norm, feats.log_floor, model_cfg, sde, tcfg,
                                  state_path(out / "state", "classifier"), test)
    acc = accuracy_by_sigma(model, norm.normalise(test.mels)[:, None], test.labels, sde)
    cfg = {"features": to_dict(feats), "sde": to_dict(sde), "classifier": to_dict(model_cfg),
           "normaliser": normaliser_to_config(norm), "labels": list(run.labels),
           "data": {"hash": data_hash(items), "train_clips": len(train), "test_clips": len(test),
                    "regime": to_dict(run.regime)},
           "training": {"classifier": {"command": run.command, "config": to_dict(tcfg), "regime": to_dict(run.regime),
                                       "steps": log["steps"],
                                       "seconds": round(log["seconds"], 1), "curve": log["curve"],
                                       "test_accuracy_by_sigma": {str(k): v for k, v in acc.items()}}}}
    cfg = save_weights(out, "classifier", model, cfg)
    write_config(out, cfg)
    return {"test_accuracy_by_sigma": acc, "steps": log["steps"], "seconds": round(log["seconds"], 1)}


@dataclass(frozen=True)
class AdaptRun:
    checkpoint: str | Path  # the bundle whose classifier is adapted (left as it is)
    out: str | Path  # the adapted bundle (a new folder; resumes from OUT/state/)
    data: str = DEFAULT_DATA
    seconds: float = 150.0
    batch_size: int = 32
    lr: float = 1e-3
    ema: float = 0.99  # a short run: an EMA of 0.999 would keep mostly the starting point
    seed: int = 0
    command: str = ""
    regime: DataRegime = DataRegime()  # the data adapted to
    max_steps: int = 10**9  # stop at this many optimiser steps, or at seconds, whichever comes first


def adapt_classifier_bundle(run: AdaptRun) -> dict:
    """Fine-tune only the classifier's normalisation layers on the regime's data, into a new bundle: the source's
    config, evaluator and every score network that reads no taps (the U-Nets, the x_t-only ablation) come
    along unchanged; networks on the taps (ScoreSubnet and its student) are left behind, since the taps they
    were trained on have changed. config.json is written last, so an interrupted run leaves no bundle that
    looks finished; rerunning a finished adaptation changes nothing. Returns the summary."""
    src, out = Path(run.checkpoint), Path(run.out)
    if out.resolve() == src.resolve():
        raise InvalidInput(f"--out {out} is the bundle being adapted; give a new folder")
    if (out / "config.json").exists():  # a finished adaptation (and what has been trained into it since) stays
        done = read_config(out).get("training", {}).get("classifier_adaptation")
        if done is None:
            raise InvalidInput(f"--out {out} already holds a bundle that is not an adaptation; give a new folder")
        asks_longer = run.max_steps > done["steps"] and run.seconds > done["seconds"] + 1  # stopped short of both
        if asks_longer or done.get("adapted_from") != str(src):
            raise InvalidInput(f"--out {out} already holds an adaptation of {done.get('adapted_from')} for "
                               f"{done['steps']} steps ({done['seconds']:.0f} s); give a new folder to adapt anew or "
                               "for longer")
        return {"steps": done["steps"], "seconds": done["seconds"], "already_adapted": True,
                "test_accuracy_by_sigma_before": done["test_accuracy_by_sigma_before"],
                "test_accuracy_by_sigma": done["test_accuracy_by_sigma"]}
    path = state_path(out / "state", "classifier_adaptation")
    if (legacy := legacy_state_error(path)) is not None:
        raise legacy
    bundle = load_bundle(src, model=None)
    cfg = copy.deepcopy(bundle.config)  # the adapted bundle's config, edited below; the source's stays as read
    labels = tuple(bundle.labels)
    train = load_features(list_items(run.data, "train", labels, run.regime.speakers), bundle.features, progress=True,
                          regime=run.regime)
    test = load_features(list_items(run.data, "test", labels, run.regime.speakers), bundle.features, progress=True,
                         regime=run.regime)
    x_test = bundle.normaliser.normalise(test.mels)[:, None]
    before = accuracy_by_sigma(bundle.classifier, x_test, test.labels, bundle.sde)
    tcfg = TrainConfig(batch_size=run.batch_size, lr=run.lr, seconds=run.seconds, max_steps=run.max_steps, seed=run.seed, labels=labels,
                       ema_decay=run.ema)
    make_folder(out)
    model, log = adapt_normalisation(bundle.classifier, train, bundle.normaliser, bundle.features.log_floor,
                                     bundle.sde, tcfg, path, test)
    after = accuracy_by_sigma(model, x_test, test.labels, bundle.sde)
    kept = [k for k in SCORE_NETWORKS.values() if not k.uses_taps and k.config_key in cfg]
    dropped = [k for k in SCORE_NETWORKS.values() if k.uses_taps]
    for name in ["evaluator"] * ("evaluator" in cfg) + [k.weights for k in kept]:
        shutil.copyfile(src / f"{name}.safetensors", out / f"{name}.safetensors")  # its hash stays in files
    for k in dropped:
        cfg.pop(k.config_key, None)
        cfg.get("files", {}).pop(f"{k.weights}.safetensors", None)
        cfg.get("training", {}).pop(k.weights, None)
        cfg.get("sampling", {}).get("models", {}).pop(k.name, None)
    cfg = save_weights(out, "classifier", model, cfg)
    record = {"command": run.command, "adapted_from": str(src), "source_classifier_sha256": bundle.weights_sha256("classifier"),
              "parameters": "normalisation layers only", "config": to_dict(tcfg), "regime": to_dict(run.regime),
              "trained_parameters": sum(p.numel() for p in normalisation_parameters(model)),
              "steps": log["steps"], "seconds": round(log["seconds"], 1), "curve": log["curve"],
              "test_accuracy_by_sigma_before": {str(k): v for k, v in before.items()},
              "test_accuracy_by_sigma": {str(k): v for k, v in after.items()}}
    cfg["training"] = {**cfg.get("training", {}), "classifier_adaptation": record}
    write_config(out, cfg)
    return {"steps": log["steps"], "seconds": round(log["seconds"], 1), "kept": [k.name for k in kept],
            "test_accuracy_by_sigma_before": before, "test_accuracy_by_sigma": after}


@dataclass(frozen=True)
class ScoreRun:
    checkpoint: str | Path
    data: str = DEFAULT_DATA
    model: str = "tapdiff"
    seconds: float = 3600.0
    widths: tuple[int, ...] | None = None  # None: the model's default (or, continuing, the trained network's)
    labels: tuple[int, ...] | None = None  # None: every label of the classifier
    batch_size: int = 16  # the global batch under torchrun
    lr: float = 1e-3
    ema: float = 0.999
    snapshot_every: float = 600.0
    heldout_clips: int | None = None  # None: as many as fit in HELDOUT_SHARE of the seconds (heldout.affordable_clips)
    continue_training: bool = False
    seed: int = 0
    command: str = ""
    regime: DataRegime = DataRegime()  # speaker subset and corruption of the training and held-out clips
    max_steps: int = 10**9  # stop at this many optimiser steps, or at seconds, whichever comes first


def held_out_loss(run: ScoreRun, bundle, extractor: TapExtractor, kind, net_cfg, labels) -> HeldOutDSM | None:
    """The held-out DSM loss of a score run on test-split clips spread over the split: ``run.heldout_clips`` of
    them, or by default as many as its snapshots can evaluate in ``HELDOUT_SHARE`` of ``run.seconds`` (measured
    on a few clips with a network of the run's shape); None when none fit."""
    items = list_items(run.data, "test", labels, run.regime.speakers)
    wanted = HELDOUT_MAX_CLIPS if run.heldout_clips is None else run.heldout_clips
    items = items[::max(1, len(items) // wanted)][:wanted]
    held = bundle.normaliser.normalise(load_features(items, bundle.features, progress=False,
                                                     regime=run.regime).mels)[:, None]
    if run.heldout_clips is None:
        probe = build_score_model(extractor, kind.build(net_cfg, bundle.classifier.tap_channels, bundle.input_hw))
        cost = seconds_per_clip_level(probe, held[:HELDOUT_MIN_CLIPS], bundle.sde)
        points = 2 + int(run.seconds // run.snapshot_every)  # the opening point, each snapshot, the last
        fit = affordable_clips(cost, sum(map(len, band_sigmas(bundle.sde).values())), points,
                               HELDOUT_SHARE * run.seconds, len(held))
        if fit == 0:
            logger.warning(f"no held-out loss: {points} evaluations of even {HELDOUT_MIN_CLIPS} clips would take "
                           f"more than {HELDOUT_SHARE:.0%} of --seconds {run.seconds:g} (measured {cost * 1e3:.0f} ms "
                           "per clip and level); ask for them with --heldout-clips")
            return None
        held = held[::max(1, len(held) // fit)][:fit]
    return HeldOutDSM(held, bundle.sde)


def train_score_network(run: ScoreRun) -> dict | None:
    """Train a score network (classifier frozen) into an existing checkpoint folder, resuming from its state/;
    EMA snapshots with the held-out DSM loss along the way. Under torchrun with DistributedDataParallel.
    Returns the summary (None on ranks other than 0)."""
    kind = score_network_kind(run.model)
    if kind.teacher is not None:
        raise InvalidInput(f"{run.model!r} is a distilled student: train it with `tapdiff distill --model {run.model}`")
    bundle = load_bundle(run.checkpoint, model=None)
    out = Path(run.checkpoint)
    name = kind.weights
    if (legacy := legacy_state_error(state_path(out / "state", name))) is not None:
        raise legacy  # before any data is loaded
    init = start = None
    if run.continue_training:
        net_cfg, init, start = continuation(bundle, kind, run.widths)
    else:
        net_cfg = kind.default_config(run.widths)
    labels = run.labels or bundle.labels
    if not set(labels) <= set(bundle.labels):
        raise InvalidInput(f"--digit {list(labels)} must be a subset of the classifier's labels {list(bundle.labels)}")
    rank, world = distributed_shard() or (0, 1)
    if run.batch_size % world:
        raise InvalidInput(f"--batch-size {run.batch_size} (the global batch) does not split over {world} processes")
    feats = bundle.features
    train = load_features(list_items(run.data, "train", labels, run.regime.speakers), feats, progress=rank == 0,
                          regime=run.regime)
    tcfg = TrainConfig(batch_size=run.batch_size // world, lr=run.lr, seconds=run.seconds, max_steps=run.max_steps, seed=run.seed,
                       labels=labels, ema_decay=run.ema)
    snapshots = out / "state" / f"{name}_snapshots"
    extractor = TapExtractor(bundle.classifier, bundle.sde)
    heldout, heldout_clips = None, 0
    if run.heldout_clips != 0 and rank == 0:
        heldout = held_out_loss(run, bundle, extractor, kind, net_cfg, labels)
        heldout_clips = len(heldout.x0) if heldout is not None else 0
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
                           checkpoint_every_s=run.snapshot_every, init=init, start=start,
                           stretch={"command": run.command})
    summary = None
    if rank == 0:
        files = save_weights(out, name, ema.model, {})["files"]
        record = {"command": run.command, "config": to_dict(tcfg), "regime": to_dict(run.regime), "processes": world,
                  "heldout_clips": heldout_clips,
                  "threads": torch.get_num_threads(), "global_batch": tcfg.batch_size * world,
                  "steps": log["steps"], "seconds": round(log["seconds"], 1),
                  "final_loss": log["losses"][-1][2] if log["losses"] else None, "curve": log["curve"]}
        for key in ("continues", "stretches"):  # earlier trained runs; each invocation of this one
            if key in log:
                record[key] = log[key]
        update_config(out, {kind.config_key: to_dict(net_cfg)}, files=files, training={name: record})
        summary = {"steps": log["steps"], "seconds": round(log["seconds"], 1), "processes": world}
    if world > 1:
        finish_group()
    return summary


@dataclass(frozen=True)
class DistillRun:
    checkpoint: str | Path
    model: str = "tapdiff-distilled"  # the student; its teacher is the registry's
    seconds: float = 1800.0
    trajectories: TrajectorySettings = TrajectorySettings()
    held_out: int = 128  # trajectories kept out of training for the held-out loss
    steps: int = 4  # the student's sampling budget written into sampling.models (multistep, 1 evaluation a step)
    rho: float | None = None  # its schedule's rho (None: the SDE's)
    batch_size: int = 16
    lr: float = 2e-4
    ema: float = 0.999
    snapshot_every: float = 300.0
    guided_taps: bool = True  # tapdiff's student: the guidance cotangent steered into its taps (SubnetConfig)
    condition_lr_scale: float = 1.0  # the condition embedding and FiLM layers at this multiple of lr (new inputs)
    seed: int = 0
    command: str = ""
    max_steps: int = 10**9  # stop at this many optimiser steps, or at seconds, whichever comes first


def distill_student(run: DistillRun) -> dict:
    """Generate the guided teacher's trajectories (resumable), train the student on them (resumable), and
    write its weights, config, training record and sampling entry into the bundle. Returns the summary."""
    kind = score_network_kind(run.model)
    if kind.teacher is None:
        raise InvalidInput(f"{run.model!r} is not a distilled student; students: "
                           f"{[k for k, v in SCORE_NETWORKS.items() if v.teacher]}")
    out = Path(run.checkpoint)
    path = state_path(out / "state", kind.weights)
    if (legacy := legacy_state_error(path)) is not None:
        raise legacy
    bundle = load_bundle(out, model=kind.teacher)
    teacher = score_model(bundle, fade_sigma=float(bundle.sampling["guidance_fade_sigma"]))
    teacher_kind = score_network_kind(kind.teacher)
    teacher_id = bundle.weights_sha256(teacher_kind.weights) or ""
    data, gen_seconds = teacher_trajectories(teacher, bundle.labels, run.trajectories, bundle.input_hw,
                                             out / "state" / f"{kind.weights}_trajectories", teacher_id)
    train, held = data.split(run.held_out)
    net_cfg = dataclasses.replace(from_dict(teacher_kind.config_cls, bundle.config[teacher_kind.config_key]),
                                  label_classes=teacher.n_classes)
    if kind.uses_taps:
        net_cfg = dataclasses.replace(net_cfg, guided_taps=run.guided_taps)
    torch.manual_seed(run.seed)
    net = kind.build(net_cfg, bundle.classifier.tap_channels, bundle.input_hw)
    init_from_teacher(net, bundle.score_net)
    student = build_score_model(TapExtractor(bundle.classifier, bundle.sde), net)
    held_loss = HeldOutDistillation(held)
    draw = batch_draw(train, run.batch_size)
    tcfg = TrainConfig(batch_size=run.batch_size, lr=run.lr, seconds=run.seconds, max_steps=run.max_steps, seed=run.seed,
                       labels=bundle.labels, ema_decay=run.ema)

    def loss_fn(gen):
        return distillation_loss(student, train, *draw(gen))

    def snapshot(ema, step, elapsed):
        held_out = held_loss(build_score_model(student.extractor, ema.model))
        return {"heldout": {k: round(v, 5) for k, v in held_out.items()}, "threads": torch.get_num_threads()}

    scales = {} if run.condition_lr_scale == 1 else {p: run.condition_lr_scale for p in condition_parameters(net)}
    ema, log = train_loop(net, loss_fn, tcfg, path, "distill", snapshot, run.snapshot_every,
                          stretch={"command": run.command}, lr_scales=scales)
    files = save_weights(out, kind.weights, ema.model, {})["files"]
    record = {"command": run.command, "config": to_dict(tcfg), "teacher": kind.teacher, "teacher_sha256": teacher_id,
              "trajectories": {**run.trajectories.record(), "held_out": run.held_out,
                               "seconds": round(gen_seconds, 1)},
              "condition_lr_scale": run.condition_lr_scale,
              "threads": torch.get_num_threads(), "steps": log["steps"], "seconds": round(log["seconds"], 1),
              "final_loss": log["losses"][-1][2] if log["losses"] else None, "curve": log["curve"],
              "stretches": log.get("stretches", [])}
    sampling = dict(read_config(out).get("sampling", {}))
    per_model = {**sampling.get("models", {}), kind.name: {
        "sampler": "multistep", "steps": run.steps, "rho": run.rho, "guidance_fade_sigma": 0.0,
        "vocoder": sampling.get("vocoder", SAMPLING_DEFAULTS["vocoder"]), "chosen_by": run.command}}
    update_config(out, {kind.config_key: to_dict(net_cfg), "sampling": {**sampling, "models": per_model}},
                  files=files, training={kind.weights: record})
    return {"steps": log["steps"], "seconds": round(log["seconds"], 1),
            "trajectory_seconds": round(gen_seconds, 1), "heldout": log["curve"][-1]["heldout"] if log["curve"] else None}


@dataclass(frozen=True)
class EvaluatorRun:
    checkpoint: str | Path
    data: str = DEFAULT_DATA
    epochs: int = 30
    seed: int = 0
    command: str = ""


def train_evaluator(run: EvaluatorRun) -> dict:
    """Train the independent evaluation classifier on clean speech into the checkpoint folder."""
    bundle = load_bundle(run.checkpoint, model=None)
    feats, norm = bundle.features, bundle.normaliser
    train = load_features(list_items(run.data, "train"), feats, progress=True)
    test = load_features(list_items(run.data, "test"), feats, progress=True)
    t0 = time.monotonic()
    model = train_eval_classifier(norm.normalise(train.mels), train.labels, train.spans,
                                  silence_frame(norm, feats.log_floor), epochs=run.epochs, seed=run.seed, progress=True)
    with torch.no_grad():
        acc = float((model(norm.normalise(test.mels)).argmax(-1) == test.labels).float().mean())
    files = save_weights(run.checkpoint, "evaluator", model, {})["files"]
    update_config(run.checkpoint, {"evaluator": {
        "arch": {"n_mels": feats.n_mels}, "command": run.command, "epochs": run.epochs,
        "seconds": round(time.monotonic() - t0, 1), "clean_test_accuracy": acc}}, files=files)
    return {"clean_test_accuracy": acc}


@dataclass(frozen=True)
class DMDRun:
    checkpoint: str | Path  # a bundle holding the teacher and the student to start from; the student is replaced
    model: str = "tapdiff-distilled"
    seconds: float = 3600.0  # training-time budget, summed over resumes
    max_g_updates: int = 10**9
    settings: DMDSettings = DMDSettings()
    eval_every: int = 100  # G updates between curve points
    data: str = DEFAULT_DATA  # the real training clips of the GAN term (read only when settings.gan_weight > 0)
    command: str = ""
    start_from: str | Path | None = None  # another DMD run's state to start from (used when this run has none yet)


def distill_student_dmd(run: DMDRun, judge: Callable[[Path, str, int], dict] | None = None,
                        progress: bool = True) -> dict:
    """Distribution-matching distillation (``engine.training.dmd``) of the bundle's student against its guided
    teacher, resumable from ``state/<student>_dmd``; every ``eval_every`` G updates the EMA student is written into
    the bundle and ``judge(bundle folder, model, steps)`` gives the curve's point (the CLI's: recognised fraction
    and FD of ``eval_clips`` clips per digit by the standard evaluator). Returns the summary."""
    from .dmd import DMDTrainer, fake_network

    kind = score_network_kind(run.model)
    if kind.teacher is None:
        raise InvalidInput(f"{run.model!r} is not a distilled student; students: "
                           f"{[k for k, v in SCORE_NETWORKS.items() if v.teacher]}")
    out = Path(run.checkpoint)
    path = state_path(out / "state", f"{kind.weights}_dmd")
    teacher_bundle = load_bundle(out, model=kind.teacher)
    teacher = score_model(teacher_bundle)
    student_bundle = load_bundle(out, model=kind.name)
    student_net = student_bundle.score_net.train().requires_grad_(True)
    student_cfg = from_dict(kind.config_cls, student_bundle.config[kind.config_key])
    generator = build_score_model(teacher.extractor, student_net)
    hw = teacher_bundle.input_hw
    torch.manual_seed(run.settings.seed)
    fake_net = fake_network(lambda cfg: kind.build(cfg, teacher_bundle.classifier.tap_channels, hw), student_cfg,
                            teacher_bundle.score_net)
    real = None
    if run.settings.gan_weight > 0:
        clips = load_features(list_items(run.data, "train", teacher_bundle.labels), teacher_bundle.features,
                              progress=progress)
        real = (teacher_bundle.normaliser.normalise(clips.mels)[:, None], clips.labels)
    trainer = DMDTrainer(teacher, generator, fake_net, teacher_bundle.labels, hw, run.settings, real)
    started_from = {"student_sha256": student_bundle.weights_sha256(kind.weights),
                    "teacher_sha256": teacher_bundle.weights_sha256(score_network_kind(kind.teacher).weights)}
    if path.exists():
        trainer.resume(path)
    elif run.start_from is not None:
        started_from["dmd_run"] = trainer.start_from(Path(run.start_from))
    trainer.log.setdefault("started_from", started_from)
    trainer.log["stretches"] = [*trainer.log.get("stretches", []), {
        "command": run.command, "from_g_updates": trainer.g_updates, "from_seconds": round(trainer.elapsed, 1),
        "threads": torch.get_num_threads()}]

    def write_student(t: DMDTrainer) -> None:
        files = save_weights(out, kind.weights, t.ema.model, {})["files"]
        record = {"method": "dmd", "command": run.command, "settings": run.settings.record(),
                  "teacher": kind.teacher, "g_updates": t.g_updates, "iterations": t.iteration,
                  "seconds": round(t.elapsed, 1), "threads": torch.get_num_threads(),
                  "curve": t.log["curve"], "stretches": t.log["stretches"], "started_from": t.log["started_from"]}
        update_config(out, {}, files=files, training={kind.weights: record})

    def judged(t: DMDTrainer) -> dict | None:
        if judge is None:
            return None
        write_student(t)
        t0 = time.monotonic()
        return {**judge(out, kind.name, run.settings.steps), "eval_seconds": round(time.monotonic() - t0, 1)}

    def show(point: dict) -> None:
        if progress:
            logger.info("curve point %s", json.dumps(point))

    trainer.train(run.seconds, run.max_g_updates, path, judged, run.eval_every, show)
    write_student(trainer)
    show({"curve": trainer.log["curve"][-1:]})
    return {"g_updates": trainer.g_updates, "iterations": trainer.iteration, "seconds": round(trainer.elapsed, 1),
            "curve": trainer.log["curve"]}
