"""Command-line interface: `lungkit data|train|sample|evaluate|compare|demo`.

A thin layer over the library: each sub-command parses its options, configures logging and
calls one library function. Sections are kept apart so each sub-command can grow on its own.
"""

import argparse
import logging
import math
import sys
from pathlib import Path

from lungkit import __version__
from lungkit.checks import PRECISIONS, STRATEGIES
from lungkit.data.labels import balanced_labels
from lungkit.models.registry import MODELS, diffusion_sampler, model_class

logger = logging.getLogger("lungkit")


# --- option types: bad values are refused while parsing, before anything loads --------
def _int_at_least(low):
    """An argparse type: an integer >= `low` (bad values are refused before anything loads)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") \
                from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _positive_float(text):
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


# --- data ------------------------------------------------------------------------------------
def add_data_commands(subparsers):
    """`lungkit data phantom|fetch|info`."""
    parser = subparsers.add_parser(
        "data", help="make, download or inspect a dataset",
        description="Make the synthetic phantom CT dataset, download IQ-OTH/NCCD (or any zip "
        "in the same layout), or summarise a dataset folder.")
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)
    commands = parser.add_subparsers(title="data commands", metavar="COMMAND")

    phantom = commands.add_parser(
        "phantom", help="write synthetic chest-CT slices in the IQ-OTH/NCCD layout",
        description="Write deterministic synthetic axial chest-CT slices (Normal, Benign, "
        "Malignant) as JPG files in the IQ-OTH/NCCD folder layout; load them with "
        "`lungkit.load_data(OUT)`.")
    phantom.add_argument("--out", required=True, help="dataset folder to create, e.g. data/phantom")
    phantom.add_argument("--per-class", type=_int_at_least(1), default=40,
                         help="slices per class (default 40)")
    phantom.add_argument("--size", type=_int_at_least(32), default=512,
                         help="slice side in pixels (default 512)")
    phantom.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (default 0); the same "
                         "seed gives byte-identical files")
    phantom.set_defaults(handler=_data_phantom)

    fetch = commands.add_parser(
        "fetch", help="download and extract a dataset (Drive, Kaggle, URL or local zip)",
        description="Download and safely extract a dataset once; a second run is a no-op. "
        "SOURCE is a Google Drive file id or share link, kaggle:OWNER/DATASET (e.g. "
        "kaggle:hamdallak/the-iqothnccd-lung-cancer-dataset), an http(s) URL of a zip, or a "
        "local .zip file.")
    fetch.add_argument("source", metavar="SOURCE", help="Drive id/link, kaggle:owner/name, URL or .zip")
    fetch.add_argument("--out", required=True, help="folder to extract into, e.g. data/iqothnccd")
    fetch.add_argument("--sha256", default=None, metavar="HEX",
                       help="expected SHA-256 of the archive; a mismatch stops before extraction")
    fetch.set_defaults(handler=_data_fetch)

    info = commands.add_parser(
        "info", help="summarise a dataset folder: class counts, sizes, unreadable files",
        description="Print class counts, the image size and mode histograms, unreadable or "
        "ignored files, and which IQ-OTH/NCCD copy the folder matches (1190 slices = "
        "original release, 1097 = the copy most papers use).")
    info.add_argument("data_dir", metavar="DIR", help="dataset folder (as passed to load_data)")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(handler=_data_info)


def _data_phantom(args):
    from lungkit.data.phantom import make_phantom_dataset

    root = make_phantom_dataset(args.out, per_class=args.per_class, size=args.size,
                                seed=args.seed, progress=True)
    print(root)


def _data_fetch(args):
    from lungkit.data.fetch import fetch_dataset

    try:
        print(fetch_dataset(args.source, args.out, sha256=args.sha256))
    except (ConnectionError, RuntimeError) as error:
        logger.error("%s", error)
        return 1


def _data_info(args):
    import json

    from lungkit.data.images import dataset_info

    info = dataset_info(args.data_dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    lines = [f"Dataset: {info['root']}",
             f"Copy:    {info['copy']}",
             f"Images:  {info['total']} readable of {info['files']} image files"]
    lines += [f"  {name:<10} {count:>6}" for name, count in info["counts"].items()]
    lines.append("Sizes (WxH): " + ", ".join(f"{k}: {v}" for k, v in info["sizes"].items()))
    lines.append("Modes:       " + ", ".join(f"{k}: {v}" for k, v in info["modes"].items()))
    lines.append("Extensions:  " + ", ".join(f"{k}: {v}" for k, v in info["extensions"].items()))
    lines.append(f"Unreadable:  {len(info['unreadable'])}")
    lines += [f"  {path}: {reason}" for path, reason in info["unreadable"]]
    if info["ignored"]:
        lines.append(f"Ignored (not images): {len(info['ignored'])}")
        lines += [f"  {path}" for path in info["ignored"]]
    print("\n".join(lines))


# --- train / sample ---------------------------------------------------------------------------
def _training_data(args, data_dir):
    """Returns `dataset_fn(global_batch) -> tf.data.Dataset`, which reads the data when called
    (after the model is built, so a bad model setting fails before any image is read)."""
    from lungkit.data.pipeline import files_and_labels, make_dataset

    options = dict(image_size=args.size, channels=args.channels, shuffle=True, seed=args.seed,
                   with_labels=True)
    if args.stream:
        files, labels = files_and_labels(data_dir)
        if args.limit:  # the first `limit` files of each class, as load_data(limit=) does
            keep = [i for i, label in enumerate(labels) if (labels[:i] == label).sum() < args.limit]
            files, labels = [files[i] for i in keep], labels[keep]
        logger.info("Data: streaming %d files from %s", len(files), data_dir)
        return lambda batch: make_dataset(files=files, labels=labels, batch_size=batch,
                                          cache=args.cache, **options)

    def in_memory(batch):
        from lungkit.data.images import load_data

        images, labels = load_data(data_dir, size=args.size, limit=args.limit)
        logger.info("Data: %d images of %d px in memory from %s", len(images), args.size,
                    data_dir)
        return make_dataset(images, labels, batch_size=batch, **options)

    return in_memory


def _train(args):
    import keras

    from lungkit import training, viz
    from lungkit.data.sources import resolve_data_dir

    keras.utils.set_random_seed(args.seed)
    cls = model_class(args.model)
    kwargs = {"image_size": args.size, "channels": args.channels, **parse_assignments(args.set)}
    kwargs.setdefault("seed", args.seed)  # every registered model takes one
    dataset = _training_data(args, resolve_data_dir(args.data))
    out = Path(args.out or f"runs/{args.model}")
    model, history = training.train(
        lambda: cls(**kwargs), dataset, epochs=args.epochs, out_dir=out,
        strategy=args.strategy, precision=args.precision, jit=args.jit,
        learning_rate=args.learning_rate, batch_size=args.batch_size, name=args.model,
        save_every=args.save_every, retrain=args.retrain, lr_schedule=args.lr_schedule,
        warmup=args.warmup)
    viz.plot_history(dict(history), keys=list(model.loss_names),
                     path=out / "curves.png", title=f"lungkit train {args.model}")
    if args.samples:
        options = {"seed": args.seed}
        if diffusion_sampler(args.model):
            options["steps"] = min(args.sample_steps, model.timesteps)
        if getattr(model, "num_classes", None):  # conditional: the classes in turn, in order
            options["label"] = balanced_labels(args.samples, model.num_classes)
        viz.save_grid(model.generate(args.samples, **options), out / "samples.png")
    last = {k: history[k][-1] for k in model.loss_names if history.get(k)}
    print(f"Model: {out / f'{args.model}.keras'} ({len(history.get('epoch', []))} epochs; "
          + ", ".join(f"{k} {v:.5g}" for k, v in last.items()) + ")")
    return 0


def _sample(args):
    from lungkit import viz
    from lungkit.models.registry import load_model, model_name, model_spec

    spec = model_spec(args.model)
    options = {"seed": args.seed}
    for key in ("steps", "sampler", "label", "guidance"):
        value = getattr(args, key)
        if key == "label" and value is not None and value.isdigit():
            value = int(value)  # a class index; names ("malignant") stay strings
        if value is not None:
            if key not in spec.sampling_options:
                raise ValueError(f"--{key} does not apply to the {args.model} model (it takes "
                                 f"{', '.join('--' + o for o in spec.sampling_options)}).")
            options[key] = value
    path = Path(args.model_path)
    if not path.exists():
        raise FileNotFoundError(f"`--model` file not found: {path}")
    model = load_model(path)
    if model_name(model) != args.model:
        raise ValueError(f"--model {path} holds a {type(model).__name__} "
                         f"({model_name(model) or 'not a generative model'}), not a "
                         f"{args.model} model.")
    images = model.generate(args.n, **options)
    viz.save_grid(images, args.out)
    print(args.out)
    return 0


def add_train_commands(subparsers):
    """`lungkit train MODEL ...` and `lungkit sample MODEL ...`."""
    train = subparsers.add_parser(
        "train", help="train one model (resumable: run the same command again after a crash)",
        description="Train a model on a dataset folder (IQ-OTH/NCCD layout; default: the "
        "phantom set in data/). Writes OUT/MODEL.keras (last) and MODEL.best.keras, "
        "history.csv, curves.png and samples.png. A killed run started again with the same "
        "--out resumes at its last finished epoch; a finished one is loaded, not trained "
        "again (more --epochs continue it; --retrain starts over).")
    train.add_argument("model", metavar="MODEL", choices=tuple(MODELS),
                       help="; ".join(f"{s.name}: {s.summary}" for s in MODELS.values()))
    train.add_argument("--data", default=None, help="dataset folder (default: phantom set)")
    train.add_argument("--size", type=_int_at_least(8), default=128,
                       help="image side in pixels (128)")
    train.add_argument("--channels", type=int, choices=(1, 3), default=3,
                       help="3 (RGB, the paper) or 1 (grayscale, a third of the data and memory)")
    train.add_argument("--epochs", type=_int_at_least(1), default=10,
                       help="total epochs (10); more than a finished run's continue it")
    train.add_argument("--batch-size", type=_int_at_least(1), default=32,
                       help="per replica; the global batch is this x replicas (32)")
    train.add_argument("--learning-rate", type=_positive_float, default=1e-3,
                       help="Adam's (1e-3); the peak with --lr-schedule cosine")
    train.add_argument("--lr-schedule", default="constant", choices=("constant", "cosine"),
                       help="constant, or cosine: linear warm-up (--warmup) then cosine decay")
    train.add_argument("--warmup", type=float, default=0.05,
                       help="cosine warm-up: a fraction of the run (< 1) or steps (0.05)")
    train.add_argument("--out", default=None, help="run folder (default runs/MODEL)")
    train.add_argument("--strategy", default="auto", choices=STRATEGIES,
                       help="auto|cpu|mirrored|multiworker|tpu (multiworker reads TF_CONFIG)")
    train.add_argument("--precision", default="float32", choices=PRECISIONS,
                       help="float32|mixed_float16 (GPU)|mixed_bfloat16 (TPU, recent CPUs)")
    train.add_argument("--jit", action="store_true", help="compile the train step with XLA")
    train.add_argument("--save-every", type=_int_at_least(1), default=1,
                       help="checkpoint and back up every N epochs (1); a crash repeats < N")
    train.add_argument("--stream", action="store_true",
                       help="decode files with tf.data each epoch instead of loading to memory")
    train.add_argument("--cache", default=None,
                       help="with --stream: 'memory' or a path prefix for a decoded cache")
    train.add_argument("--limit", type=_int_at_least(1), default=None,
                       help="at most N images per class")
    train.add_argument("--seed", type=int, default=0, help="seed of weights, noise, shuffle")
    train.add_argument("--samples", type=_int_at_least(0), default=16,
                       help="images in samples.png after training (0: none)")
    train.add_argument("--sample-steps", type=_int_at_least(1), default=25,
                       help="sampling steps for samples.png (diffusion; 25)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="model constructor argument, e.g. --set latent_dim=64 "
                       "--set widths=16,32 (repeatable)")
    train.add_argument("--retrain", action="store_true",
                       help="start over even if --out holds a finished run (it is moved to "
                       "OUT/replaced-<time>/); without it a finished run with the same "
                       "settings is loaded, not trained again")
    train.set_defaults(handler=_train)

    sample = subparsers.add_parser(
        "sample", help="generate an image grid from a saved model",
        description="Load OUT/MODEL.keras from `lungkit train` and save a grid of samples.")
    sample.add_argument("model", metavar="MODEL", choices=tuple(MODELS),
                        help=", ".join(MODELS))
    sample.add_argument("--model", dest="model_path", required=True, help="a saved .keras model")
    sample.add_argument("-n", type=_int_at_least(1), default=16, help="number of images (16)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", default="samples.png", help="PNG path (samples.png)")
    sample.add_argument("--steps", type=_int_at_least(1), default=None,
                        help="sampling steps (diffusion)")
    sample.add_argument("--sampler", default=None, help="ddim|ddpm|dpm++ (diffusion)")
    sample.add_argument("--label", default=None,
                        help="class to generate: normal|benign|malignant or 0|1|2 (a model "
                        "trained with --set num_classes=3)")
    sample.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale w (diffusion with --label): 0 "
                        "unconditional, 1 conditional (default), >1 guided, e.g. 3.0")
    sample.set_defaults(handler=_sample)


# --- evaluate / compare / demo ----------------------------------------------------------------
def parse_assignments(pairs):
    """`["vae.epochs=5", "models=vae,denoiser"]` -> `{"vae.epochs": 5, "models": ("vae", ...)}`."""
    values = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise ValueError(f"`--set` takes KEY=VALUE. Received: {pair!r}")
        key, raw = pair.split("=", 1)
        values[key.strip()] = _parse_value(raw.strip())
    return values


def _parse_value(raw):
    if "," in raw:
        return tuple(_parse_value(part) for part in raw.split(",") if part)
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def _run_compare(args, preset, data_dir, out):
    from lungkit import experiment

    overrides = parse_assignments(args.set)
    for key in ("image_size", "channels", "strategy", "precision", "n_generate", "limit"):
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    if args.models:
        overrides["models"] = tuple(m.strip() for m in args.models.split(",") if m.strip())
    overrides["data_dir"] = str(data_dir) if data_dir else None
    config = experiment.get_config(preset, **overrides)
    out = out or f"runs/{config.name}"
    results = experiment.compare(config, out)
    print(f"Report: {out}/report.html")
    for claim in results["claims"]:
        print(f"  [{claim['verdict']}] {claim['claim']}  ({claim['evidence']})")
    return 0


def _add_experiment_options(parser):
    parser.add_argument("--models", default=None,
                        help="comma-separated subset of vae,denoiser,diffusion,latent")
    parser.add_argument("--size", dest="image_size", type=_int_at_least(8), default=None,
                        help="image size in pixels (default: the preset's)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=None,
                        help="1 (grayscale: a third of the data and memory) or 3 (RGB, as the paper)")
    parser.add_argument("-n", "--n-generate", dest="n_generate", type=_int_at_least(2), default=None,
                        help="samples per model for the metrics")
    parser.add_argument("--limit", type=_int_at_least(1), default=None, help="at most N images per class")
    parser.add_argument("--strategy", default=None,
                        choices=tuple(s for s in STRATEGIES if s != "multiworker"),
                        help="auto|cpu|mirrored|tpu: the tf.distribute strategy every model "
                        "is built and trained under")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="float32|mixed_float16|mixed_bfloat16: every model's dtype policy")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override any config field, e.g. --set vae.epochs=50 "
                        "--set diffusion.sampling_steps=25 (repeatable)")


def add_experiment_commands(subparsers):
    """`lungkit evaluate`, `lungkit compare`, `lungkit demo`."""
    compare = subparsers.add_parser(
        "compare", help="train every model on one split, measure them, write the report",
        description="Trains the paper's VAE, the paper's U-Net denoiser and a true DDPM/DDIM "
        "(optionally the latent hybrid) on one held-out split; times training and generation; "
        "computes sharpness, FID/KID, precision/recall, diversity and memorization; writes "
        "report.md, report.html, metrics.json and figures/ to --out.",
    )
    compare.add_argument("--data", default=None,
                         help="dataset folder (IQ-OTH/NCCD layout); default: the phantom set")
    compare.add_argument("--preset", default="quick", choices=("quick", "classes", "paper"),
                         help="quick: minutes on a CPU; classes: class-conditional models at "
                              "64 px, all four (2-4 h on a 2-core CPU); paper: Chen (2024) "
                              "settings. Run again into the same --out after a crash: "
                              "finished models are loaded, the one in progress resumes")
    compare.add_argument("--out", default=None, help="run folder (default runs/<preset>)")
    _add_experiment_options(compare)
    compare.set_defaults(handler=lambda a: _run_compare(a, a.preset, a.data, a.out))

    demo = subparsers.add_parser(
        "demo", help="the quick comparison on the built-in phantom set (what `make demo` runs)",
        description="Runs `lungkit compare --preset quick` on the built-in phantom set: writes "
        "the synthetic CT slices, trains the VAE, the U-Net denoiser and the DDPM briefly "
        "(32 px, grey; a few minutes on a CPU), and writes report.md, report.html, "
        "metrics.json and figures/ to --out. Run it again into the same --out and finished "
        "models are loaded, not retrained.")
    demo.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    _add_experiment_options(demo)
    demo.set_defaults(handler=lambda a: _run_compare(a, "quick", None, a.out))

    evaluate = subparsers.add_parser(
        "evaluate", help="metrics of a saved model's samples against real images",
        description="Loads a saved lungkit model (.keras), generates -n samples and scores "
        "them against the real slices in --data: FID and KID (features chosen by "
        "--features), precision/recall, sharpness, diversity and memorization. Prints the "
        "metrics as JSON (and writes them to --out if given).")
    evaluate.add_argument("--model", required=True, help="a saved .keras model")
    evaluate.add_argument("--data", required=True, help="real images (IQ-OTH/NCCD layout)")
    evaluate.add_argument("-n", type=_int_at_least(2), default=64, help="samples to generate (default 64)")
    evaluate.add_argument("--steps", type=_int_at_least(1), default=50, help="sampling steps (diffusion)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--features", default="auto", help="auto|inception|domain")
    evaluate.add_argument("--out", default=None, help="write the metrics as JSON here")
    evaluate.set_defaults(handler=_run_evaluate)


def _run_evaluate(args):
    import json

    from lungkit.data.images import load_data, normalize, to_channels
    from lungkit.evaluation import metrics
    from lungkit.evaluation.features import get_feature_extractor
    from lungkit.models.registry import diffusion_sampler, load_model, model_name

    model = load_model(args.model)
    name = model_name(model)
    if name is None:
        raise ValueError(f"--model {args.model} holds a {type(model).__name__}, which does not "
                         f"generate images; give a saved {', '.join(MODELS)} model.")
    real, labels = load_data(args.data, size=model.image_size)
    real = to_channels(normalize(real), model.channels)
    kwargs = {"seed": args.seed}
    if diffusion_sampler(name):
        kwargs["steps"] = args.steps
    generated = model.generate(args.n, **kwargs)
    extractor = get_feature_extractor(args.features, train_images=real, train_labels=labels)
    result = metrics.evaluate(generated, real, train=real, features=extractor)
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


# --- entry point ------------------------------------------------------------------------------
def build_parser():
    parser = argparse.ArgumentParser(
        prog="lungkit",
        description="VAE vs. diffusion models for lung CT image generation (Chen, 2024): "
        "data tools, training, sampling and the comparison report.",
    )
    parser.add_argument("--version", action="version", version=f"lungkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_data_commands(subparsers)
    add_train_commands(subparsers)
    add_experiment_commands(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt as interrupt:  # Ctrl-C: one line, what is saved (no traceback)
        logger.error("%s", str(interrupt) or "Interrupted.")
        return 130
    except (ValueError, FileNotFoundError, TypeError, OSError) as error:
        logger.error("%s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
