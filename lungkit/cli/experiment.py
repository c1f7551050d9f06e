"""`lungkit compare`, `lungkit demo` and `lungkit evaluate`."""

from lungkit.checks import FEATURE_CHOICES, PRECISIONS, STRATEGIES
from lungkit.cli.options import fraction_below_one, int_at_least, parse_assignments
from lungkit.models.registry import MODELS


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
    parser.add_argument("--size", dest="image_size", type=int_at_least(8), default=None,
                        help="image size in pixels (default: the preset's)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=None,
                        help="1 (grayscale: a third of the data and memory) or 3 (RGB, as the paper)")
    parser.add_argument("-n", "--n-generate", dest="n_generate", type=int_at_least(2), default=None,
                        help="samples per model for the metrics")
    parser.add_argument("--limit", type=int_at_least(1), default=None, help="at most N images per class")
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
        "the synthetic CT slices, trains the VAE, the U-Net denoiser, the DDPM and the latent "
        "hybrid briefly (64 px, grey; under 10 minutes on 2 CPU cores), and writes report.md, report.html, "
        "metrics.json and figures/ to --out. Run it again into the same --out and finished "
        "models are loaded, not retrained.")
    demo.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    _add_experiment_options(demo)
    demo.set_defaults(handler=lambda a: _run_compare(a, "quick", None, a.out))

    evaluate = subparsers.add_parser(
        "evaluate", help="metrics of a saved model's samples against real images",
        description="Loads a saved lungkit model (.keras), generates -n samples and scores "
        "them against the real slices in --data: FID and KID with 95%% bootstrap intervals "
        "in every feature space (named in each key, e.g. kid[random_cnn]; --features picks "
        "them), precision/recall, sharpness, diversity, and memorization when --train names "
        "the model's training images. A stratified --encoder-fraction of --data trains the "
        "domain encoder and fixes the feature scales; the rest is the reference. Prints the "
        "metrics as JSON (and writes them to --out if given).")
    evaluate.add_argument("--model", required=True, help="a saved .keras model")
    evaluate.add_argument("--data", required=True,
                          help="real images no model trained on (IQ-OTH/NCCD layout)")
    evaluate.add_argument("--train", default=None,
                          help="the model's training images: near copies of them count as "
                          "memorized (default: no memorization metrics)")
    evaluate.add_argument("-n", type=int_at_least(2), default=64,
                          help="samples to generate (64)")
    evaluate.add_argument("--steps", type=int_at_least(1), default=50,
                          help="sampling steps (diffusion; 50)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--features", default="auto", choices=FEATURE_CHOICES,
                          help="auto: every space that exists; domain: without InceptionV3; "
                          "inception: InceptionV3 required (local weights)")
    evaluate.add_argument("--encoder-fraction", type=fraction_below_one, default=0.25,
                          help="share of --data for the domain encoder (0.25; 0: untrained "
                          "feature spaces only, unscaled)")
    evaluate.add_argument("--out", default=None, help="write the metrics as JSON here")
    evaluate.set_defaults(handler=_run_evaluate)


def _run_evaluate(args):
    import json

    import numpy as np

    from lungkit.data.images import load_data, normalize, to_channels
    from lungkit.evaluation import metrics
    from lungkit.evaluation.extractors import build_extractors
    from lungkit.experiment.compare import split_indices
    from lungkit.files import write_json
    from lungkit.models.registry import diffusion_sampler, load_model, model_name

    model = load_model(args.model)
    name = model_name(model)
    if name is None:
        raise ValueError(f"--model {args.model} holds a {type(model).__name__}, which does not "
                         f"generate images; give a saved {', '.join(MODELS)} model.")

    def read(folder):
        images, labels = load_data(folder, size=model.image_size)
        return to_channels(normalize(images), model.channels), labels

    real, labels = read(args.data)
    train = read(args.train)[0] if args.train else None
    reference, encoder = np.arange(len(real)), np.zeros(0, dtype=int)
    if args.encoder_fraction > 0:
        reference, encoder = split_indices(labels, args.encoder_fraction, args.seed)
    if len(reference) < 2:
        raise ValueError(f"--data {args.data} leaves {len(reference)} reference slice(s) "
                         f"after the encoder's share ({args.encoder_fraction}); give more "
                         f"slices or a smaller --encoder-fraction.")
    extractors = build_extractors(real[encoder], labels[encoder], size=model.image_size,
                                  channels=model.channels, seed=args.seed,
                                  features=args.features, progress=True)
    kwargs = {"seed": args.seed}
    if diffusion_sampler(name):
        kwargs["steps"] = args.steps
    generated = model.generate(args.n, **kwargs)
    result = metrics.evaluate(generated, real[reference], train=train, features=extractors,
                              seed=args.seed, progress=True)
    print(json.dumps(result, indent=2, default=float))
    if args.out:
        write_json(args.out, result, default=float)
    return 0

