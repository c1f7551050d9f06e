"""`lungkit train MODEL`, `lungkit train distill --teacher PATH` and `lungkit sample MODEL`."""

import logging
from pathlib import Path

from lungkit.checks import PRECISIONS, SAVE_SECONDS, STRATEGIES
from lungkit.cli.options import (
    int_at_least,
    non_negative_float,
    parse_assignments,
    positive_float,
)
from lungkit.data.labels import balanced_labels
from lungkit.models.registry import REGISTERED, STUDENTS, diffusion_sampler, model_class

logger = logging.getLogger("lungkit")

DEFAULT_SIZE, DEFAULT_CHANNELS = 128, 3  # the paper's; `train distill` takes the teacher's


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

    from lungkit import training
    from lungkit.data.sources import resolve_data_dir
    from lungkit.training.strategy import check_jit

    if args.model not in STUDENTS:
        for flag, value in (("--teacher", args.teacher), ("--steps", args.steps)):
            if value is not None:
                raise ValueError(f"{flag} applies to `lungkit train distill` only, not to "
                                 f"the {args.model} model.")
    strategy = training.get_strategy(args.strategy)
    check_jit(strategy, args.jit)  # before any data are read or made
    keras.utils.set_random_seed(args.seed)
    kwargs = parse_assignments(args.set)
    if args.model in STUDENTS:
        return _train_student(args, strategy, kwargs)
    cls = model_class(args.model)
    args.size, args.channels = args.size or DEFAULT_SIZE, args.channels or DEFAULT_CHANNELS
    kwargs = {"image_size": args.size, "channels": args.channels, **kwargs}
    kwargs.setdefault("seed", args.seed)  # every registered model takes one
    dataset = _training_data(args, resolve_data_dir(args.data))
    return _fit_and_report(args, strategy, lambda: cls(**kwargs), dataset)


def _fit_and_report(args, strategy, build_model, dataset):
    """Trains with `lungkit.training.train`, then writes curves.png and samples.png."""
    from lungkit import training, viz

    out = Path(args.out or f"runs/{args.model}")
    model, history = training.train(
        build_model, dataset, epochs=args.epochs, out_dir=out,
        strategy=strategy, precision=args.precision, jit=args.jit,
        learning_rate=args.learning_rate, batch_size=args.batch_size, name=args.model,
        save_every=args.save_every, save_seconds=args.save_seconds, retrain=args.retrain, lr_schedule=args.lr_schedule,
        warmup=args.warmup)
    viz.plot_history(dict(history), keys=list(model.loss_names),
                     path=out / "curves.png", title=f"lungkit train {args.model}")
    if args.samples:
        options = {"seed": args.seed}
        if diffusion_sampler(args.model):
            options["steps"] = min(args.sample_steps, model.timesteps)
        elif args.model in STUDENTS:  # its fewest trained steps: the last round's, if done
            options["steps"] = model.trained_steps[-1]
        if getattr(model, "num_classes", None):  # conditional: the classes in turn, in order
            options["label"] = balanced_labels(args.samples, model.num_classes)
        viz.save_grid(model.generate(args.samples, **options), out / "samples.png")
    last = {k: history[k][-1] for k in model.loss_names if history.get(k)}
    print(f"Model: {out / f'{args.model}.keras'} ({len(history.get('epoch', []))} epochs; "
          + ", ".join(f"{k} {v:.5g}" for k, v in last.items()) + ")")
    if args.model in STUDENTS:
        print(f"Trained step counts: {', '.join(map(str, model.trained_steps))} (lungkit "
              f"sample {args.model} --model {out / f'{args.model}.keras'} --steps K)")
    return 0


def _teacher_path(text):
    """`--teacher`: a .keras file, or a run folder of `lungkit train` (its last model)."""
    from lungkit.training.runs import RUN_SUFFIX

    path = Path(text)
    if path.is_dir():
        runs = sorted(path.glob(f"*{RUN_SUFFIX}"))
        models = [run.with_name(run.name[:-len(RUN_SUFFIX)] + ".keras") for run in runs]
        models = [model for model in models if model.is_file()]
        if len(models) != 1:
            raise FileNotFoundError(
                f"--teacher {path} is a folder but not a run folder of one trained model "
                f"(expected one NAME.keras beside NAME{RUN_SUFFIX}; found "
                f"{[m.name for m in models] or 'none'}); give the .keras file.")
        path = models[0]
    if not path.is_file():
        raise FileNotFoundError(f"--teacher file not found: {path} (expected a .keras file of "
                                f"`lungkit train diffusion`, or its run folder)")
    return path


def _load_teacher(path):
    """Loads `path` and refuses, naming the file, a model that cannot teach."""
    from lungkit.models.distill import check_teacher
    from lungkit.models.registry import load_model

    teacher = load_model(path)
    try:
        return check_teacher(teacher)
    except (TypeError, ValueError) as error:
        raise type(error)(f"--teacher {path} cannot be distilled (expected a v-prediction "
                          f"DiffusionModel of `lungkit train diffusion`): {error}") from None


def _train_student(args, strategy, kwargs):
    """`lungkit train distill`: checks the teacher and the rounds, then distils.

    The student trains `len(rounds) x round_updates` updates; without `--set round_updates=N`
    they are the run's (`--epochs` x batches per epoch) shared equally by the rounds.
    """
    import tensorflow as tf

    from lungkit.data.pipeline import files_and_labels
    from lungkit.data.sources import resolve_data_dir
    from lungkit.models.distill import DEFAULT_START_STEPS, DEFAULT_STEPS, halving_rounds

    if args.teacher is None:
        raise ValueError(f"`lungkit train {args.model}` needs --teacher PATH (a saved "
                         f"v-prediction diffusion model or its run folder).")
    for key in ("steps", "teacher", "image_size", "channels"):
        if key in kwargs:
            raise ValueError(f"--set {key}= does not apply to `lungkit train {args.model}`: "
                             f"use --steps, --teacher (the size and channels are the "
                             f"teacher's).")
    path = _teacher_path(args.teacher)
    teacher = _load_teacher(path)  # before any data are read or made
    for flag, value, own in (("--size", args.size, teacher.image_size),
                             ("--channels", args.channels, teacher.channels)):
        if value is not None and value != own:
            raise ValueError(f"{flag} {value} differs from the teacher's {own} ({path}); "
                             f"leave it out, the student trains at the teacher's.")
    args.size, args.channels = teacher.image_size, teacher.channels
    kwargs = {"steps": args.steps or DEFAULT_STEPS, "start_steps": DEFAULT_START_STEPS,
              "seed": args.seed, **kwargs}
    rounds = halving_rounds(kwargs["start_steps"], kwargs["steps"])
    data_dir = resolve_data_dir(args.data)
    if "round_updates" not in kwargs:
        labels = files_and_labels(data_dir)[1]
        count = sum(min(int((labels == c).sum()), args.limit or len(labels))
                    for c in set(labels.tolist()))
        batches = -(-count // (args.batch_size * strategy.num_replicas_in_sync))
        kwargs["round_updates"] = max(1, args.epochs * batches // len(rounds))
    logger.info("Distilling %s: rounds %s, %d updates each", path, " -> ".join(
        map(str, (kwargs["start_steps"], *rounds))), kwargs["round_updates"])
    cls = model_class(args.model)

    def build_model():  # under a strategy's scope: the teacher's variables are made there too
        return cls(_load_teacher(path) if tf.distribute.has_strategy() else teacher, **kwargs)

    return _fit_and_report(args, strategy, build_model, _training_data(args, data_dir))


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
    _add_train_parser(subparsers)
    _add_sample_parser(subparsers)


def _add_train_parser(subparsers):
    train = subparsers.add_parser(
        "train", help="train one model (resumable: run the same command again after a crash)",
        description="Train a model on a dataset folder (IQ-OTH/NCCD layout; default: the "
        "phantom set in data/). Writes OUT/MODEL.keras (last) and MODEL.best.keras, "
        "history.csv, curves.png and samples.png. A killed run started again with the same "
        "--out resumes at its last finished epoch; a finished one is loaded, not trained "
        "again (more --epochs continue it; --retrain starts over).")
    train.add_argument("model", metavar="MODEL", choices=tuple(REGISTERED),
                       help="; ".join(f"{s.name}: {s.summary}" for s in REGISTERED.values()))
    train.add_argument("--teacher", default=None,
                       help="distill: the teacher, a v-prediction diffusion model (.keras) or "
                       "its run folder")
    train.add_argument("--steps", type=int_at_least(1), default=None,
                       help="distill: the last round's step count (4); the rounds halve "
                       "--set start_steps=N (16), keeping the 4-, 2- and 1-step students")
    train.add_argument("--data", default=None, help="dataset folder (default: phantom set)")
    train.add_argument("--size", type=int_at_least(8), default=None,
                       help=f"image side in pixels ({DEFAULT_SIZE}; distill: the teacher's)")
    train.add_argument("--channels", type=int, choices=(1, 3), default=None,
                       help="3 (RGB, the paper; the default) or 1 (grayscale, a third of the "
                       "data and memory); distill: the teacher's")
    train.add_argument("--epochs", type=int_at_least(1), default=10,
                       help="total epochs (10); more than a finished run's continue it")
    train.add_argument("--batch-size", type=int_at_least(1), default=32,
                       help="per replica; the global batch is this x replicas (32)")
    train.add_argument("--learning-rate", type=positive_float, default=1e-3,
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
    train.add_argument("--jit", action="store_true",
                       help="compile the train step with XLA (not with mirrored over several "
                       "devices, nor multiworker)")
    train.add_argument("--save-every", type=int_at_least(1), default=1,
                       help="checkpoint and back up every N epochs (1) ...")
    train.add_argument("--save-seconds", type=non_negative_float, default=SAVE_SECONDS,
                       help=f"... and at most every S seconds of training ({SAVE_SECONDS:g}; 0: "
                       "every N epochs); a crash repeats at most that much")
    train.add_argument("--stream", action="store_true",
                       help="decode files with tf.data each epoch instead of loading to memory")
    train.add_argument("--cache", default=None,
                       help="with --stream: 'memory' or a path prefix for a decoded cache")
    train.add_argument("--limit", type=int_at_least(1), default=None,
                       help="at most N images per class")
    train.add_argument("--seed", type=int, default=0, help="seed of weights, noise, shuffle")
    train.add_argument("--samples", type=int_at_least(0), default=16,
                       help="images in samples.png after training (0: none)")
    train.add_argument("--sample-steps", type=int_at_least(1), default=25,
                       help="sampling steps for samples.png (diffusion; 25)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="model constructor argument, e.g. --set latent_dim=64 "
                       "--set widths=16,32 (repeatable)")
    train.add_argument("--retrain", action="store_true",
                       help="start over even if --out holds a finished run (it is moved to "
                       "OUT/replaced-<time>/); without it a finished run with the same "
                       "settings is loaded, not trained again")
    train.set_defaults(handler=_train)


def _add_sample_parser(subparsers):
    sample = subparsers.add_parser(
        "sample", help="generate an image grid from a saved model",
        description="Load OUT/MODEL.keras from `lungkit train` and save a grid of samples.")
    sample.add_argument("model", metavar="MODEL", choices=tuple(REGISTERED),
                        help=", ".join(REGISTERED))
    sample.add_argument("--model", dest="model_path", required=True, help="a saved .keras model")
    sample.add_argument("-n", type=int_at_least(1), default=16, help="number of images (16)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", default="samples.png", help="PNG path (samples.png)")
    sample.add_argument("--steps", type=int_at_least(1), default=None,
                        help="sampling steps (diffusion; distill: one of its trained step "
                        "counts, printed by `lungkit train distill`)")
    sample.add_argument("--sampler", default=None, help="ddim|ddpm|dpm++ (diffusion)")
    sample.add_argument("--label", default=None,
                        help="class to generate: normal|benign|malignant or 0|1|2 (a model "
                        "trained with --set num_classes=3)")
    sample.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale w (diffusion with --label): 0 "
                        "unconditional, 1 conditional (default), >1 guided, e.g. 3.0")
    sample.set_defaults(handler=_sample)
