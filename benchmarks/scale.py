"""Scale benchmark: fit vs a bare step, streamed vs in-memory input, memory, and speed-ups.

For each model (VAE, UNetDenoiser, DiffusionModel) at each size (64 and 128 px by default),
in a fresh process per (model, size) so that peak memory belongs to that case alone:

- training images/s of `model.fit` against a bare `tf.function` step running the same loss
  maths (`compute_losses`), the same optimizer type and `after_train_step` (the diffusion
  model's EMA update), see `benchmarks/_common.make_bare_step`; target: fit >= 0.9x bare;
- `fit` fed by `lungkit.data.pipeline.make_dataset(files=...)` streaming 512 px phantom JPEGs
  from a temporary folder (decoded every epoch, and with `cache="memory"`) against the same
  images held in memory (`make_dataset(images)`); target: streamed >= 0.9x in-memory;
- peak memory: process RSS (`getrusage`) after the first `fit` epoch and at the end of the
  case, and TensorFlow's peak GPU memory when a GPU is present;
- the speed-ups a user can choose, at `--options-size` (the first size by default): one
  channel instead of three, mixed_bfloat16 / mixed_float16 instead of float32, XLA (`jit`);
- generation images/s: VAE decoding, one denoiser pass, DDIM at 10 / 25 / 50 steps; DDPM-1000
  is estimated from DDIM's time per network call (the same compiled step), and the measured
  DDPM-1000 figure of `sampling_speed.json` is copied in when that file sits beside `--out`.

All sides of a case take turns one epoch at a time after a warm-up epoch each (see
`benchmarks/_common.py`); each side's speed is its fastest timed epoch, and ratios are also
given in process CPU time and as a per-round median, which resist load from other processes.

    .venv/bin/python benchmarks/scale.py --sizes 64,128 --out benchmarks/scale.json
    .venv/bin/python benchmarks/scale.py --quick --out /tmp/scale.json   # ~1 minute
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

TARGET_RATIO = 0.9  # issue 8: fit >= 0.9x bare step, streamed >= 0.9x in-memory
MODELS = ("vae", "denoiser", "diffusion")
OPTIONS = ("channels=1", "mixed_bfloat16", "mixed_float16", "jit")
# Batches per epoch relative to `--steps`: a VAE step is about 10x and a denoiser step 3x
# cheaper than a diffusion step, so their epochs get more steps (fit's per-epoch costs are
# spread over about as many seconds as for the diffusion model, as in real runs).
STEPS_FACTOR = {"vae": 8, "denoiser": 2, "diffusion": 1}
PHANTOM_FILE_SIZE = 512  # px of the streamed JPEGs: the IQ-OTH/NCCD slices are 512 x 512
# Tiny networks for --quick (the sizes tests/test_cli_train.py trains with).
QUICK_MODEL_KWARGS = {
    "vae": {"widths": (8, 16), "latent_dim": 8, "dense_units": 0},
    "denoiser": {"widths": (8, 16), "groups": 4},
    "diffusion": {"widths": (8, 16), "blocks_per_level": 1, "timesteps": 20},
}


def build_model(name, size, channels=3, policy="float32", jit=False, quick=False):
    """Builds and compiles one model (Adam 1e-4) under a dtype policy; the policy is reset."""
    import keras

    from lungkit.models.registry import model_class

    keras.mixed_precision.set_global_policy(policy)
    try:
        kwargs = QUICK_MODEL_KWARGS[name] if quick else {}
        model = model_class(name)(image_size=size, channels=channels, seed=0, **kwargs)
        # compile() wraps the optimizer in a LossScaleOptimizer for mixed_float16 models.
        model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=jit)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model


def generation_rows(name, model, size, args):
    """Images/s of each model's sampler (untrained weights: speed does not depend on them)."""
    import numpy as np

    from benchmarks._common import best_seconds

    n, rows = args.gen_batch, []

    def row(task, seconds, calls, note="measured"):
        rows.append({"model": name, "size": size, "task": task, "batch": n,
                     "images_per_second": round(n / seconds, 3), "network_calls": calls,
                     "ms_per_call": round(1000 * seconds / calls, 1), "note": note})

    if name == "vae":
        row("decode (generate)", best_seconds(lambda: model.generate(n, seed=0, batch_size=n), 3), 1)
    elif name == "denoiser":
        noisy = np.random.default_rng(0).random((n, size, size, model.channels), dtype=np.float32)
        row("restore (1 pass)",
            best_seconds(lambda: model.restore(noisy, steps=1, batch_size=n), 3), 1)
    else:
        def ddim(steps):
            return lambda: model.generate(n, steps=steps, sampler="ddim", seed=0, batch_size=n,
                                          progress=False)

        ddim(2)()  # warm-up: one compiled step serves every step count
        per_call = []
        for steps in args.ddim_steps:
            start = time.perf_counter()
            ddim(steps)()
            seconds = time.perf_counter() - start
            per_call.append(seconds / steps)
            row(f"DDIM {steps} steps", seconds, steps)
        timesteps = model.timesteps
        row(f"DDPM {timesteps} steps", min(per_call) * timesteps, timesteps,
            note="estimated: T x fastest DDIM ms per call")
    return rows


def _meets(ratios):
    """Target verdict: the median of the three ratio estimates (best epoch, CPU time,
    paired rounds), so one epoch disturbed by other processes cannot decide it."""
    values = sorted(v for v in (ratios["best"], ratios["cpu"], ratios["paired"]) if v)
    return bool(values) and values[len(values) // 2] >= TARGET_RATIO


def run_case(name, size, args):
    """Everything measured for one model at one size, in this process. Returns a dict."""
    import keras
    import tensorflow as tf

    from benchmarks._common import (
        Side,
        alternate,
        current_rss_mib,
        gpu_peak_mib,
        images_per_second,
        load_average,
        make_bare_step,
        peak_rss_mib,
        ratio,
    )
    from lungkit.data.images import load_data
    from lungkit.data.phantom import make_phantom_dataset
    from lungkit.data.pipeline import files_and_labels, make_dataset

    keras.utils.set_random_seed(0)
    load_start, rss_start = load_average(), current_rss_mib()
    gpu_peak_mib(reset=True)
    batch, quick = args.batch_size, args.quick
    per_class = -(-batch * args.steps * STEPS_FACTOR[name] // 3)
    with tempfile.TemporaryDirectory() as root:
        data_dir = make_phantom_dataset(Path(root) / "phantom", per_class=per_class,
                                        size=64 if quick else PHANTOM_FILE_SIZE, progress=False)
        files, _ = files_and_labels(data_dir)
        images, _ = load_data(data_dir, size=size, progress=False)  # uint8, as the CLI does
        options = dict(batch_size=batch, image_size=size, shuffle=True, seed=0,
                       drop_remainder=True)
        memory = make_dataset(images, **options)
        streamed = make_dataset(files=files, **options)
        cached = make_dataset(files=files, cache="memory", **options)
        images_per_epoch = (len(images) // batch) * batch

        fit_model = build_model(name, size, quick=quick)
        bare_model = build_model(name, size, quick=quick)
        bare_step = make_bare_step(bare_model, keras.optimizers.Adam(1e-4))
        sides = [Side.fit("fit", fit_model, memory), Side.bare("bare", bare_step, memory),
                 Side.fit("fit, streamed", fit_model, streamed),
                 Side.fit("fit, streamed + cache", fit_model, cached)]
        with_options = size == args.options_size and name in args.options_models
        if with_options:
            gray = make_dataset(images, channels=1, **options)
            variants = {"channels=1": (build_model(name, size, channels=1, quick=quick), gray),
                        "mixed_bfloat16": (build_model(name, size, policy="mixed_bfloat16",
                                                       quick=quick), memory),
                        "mixed_float16": (build_model(name, size, policy="mixed_float16",
                                                      quick=quick), memory),
                        "jit": (build_model(name, size, jit=True, quick=quick), memory)}
            sides += [Side.fit(option, model, data, epochs=args.option_epochs)
                      for option, (model, data) in variants.items()]
        memory_after_fit = {}

        def after_warm_up(side):
            if side.name == "fit":  # only the fit model has run: the training peak
                memory_after_fit.update(rss=peak_rss_mib(), gpu=gpu_peak_mib())

        alternate(sides, args.epochs, after_warm_up)
    by_name = {side.name: side for side in sides}
    fit, bare = by_name["fit"], by_name["bare"]
    fit_bare = ratio(fit, bare)
    result = {"training": {
        "model": name, "size": size, "batch": batch, "images_per_epoch": images_per_epoch,
        "parameters": fit_model.count_params(),
        "fit_images_per_s": images_per_second(fit, images_per_epoch),
        "bare_images_per_s": images_per_second(bare, images_per_epoch),
        "fit/bare": fit_bare["best"], "fit/bare_cpu": fit_bare["cpu"],
        "fit/bare_paired": fit_bare["paired"],
        "meets_0.9": _meets(fit_bare),
    }}
    stream, cache = ratio(by_name["fit, streamed"], fit), ratio(by_name["fit, streamed + cache"], fit)
    result["input"] = {
        "model": name, "size": size,
        "in_memory_images_per_s": images_per_second(fit, images_per_epoch),
        "streamed_images_per_s": images_per_second(by_name["fit, streamed"], images_per_epoch),
        "streamed/memory": stream["best"], "streamed/memory_paired": stream["paired"],
        "cached_images_per_s": images_per_second(by_name["fit, streamed + cache"],
                                                 images_per_epoch),
        "cached/memory": cache["best"], "cached/memory_paired": cache["paired"],
        "streamed/memory_cpu": stream["cpu"], "meets_0.9": _meets(stream),
    }
    result["options"] = []
    if with_options:
        for option in OPTIONS:
            side, speedup = by_name[option], ratio(by_name[option], fit)
            result["options"].append({
                "model": name, "size": size, "option": option,
                "images_per_s": images_per_second(side, images_per_epoch),
                "float32_3ch_images_per_s": images_per_second(fit, images_per_epoch),
                "speedup": speedup["best"], "speedup_cpu_time": speedup["cpu"],
                "speedup_paired": speedup["paired"],
                "warm_up_s": round(side.seconds[0], 1)})
    result["generation"] = generation_rows(name, fit_model, size, args)
    result["memory"] = {
        "model": name, "size": size, "rss_at_start_mib": rss_start,
        "peak_rss_after_first_fit_epoch_mib": memory_after_fit.get("rss"),
        "peak_rss_case_mib": peak_rss_mib(), "gpu_peak_training_mib": memory_after_fit.get("gpu"),
        "gpu_peak_case_mib": gpu_peak_mib()}
    result["raw"] = [{"model": name, "size": size, "side": side.name,
                      "epoch_seconds": [round(s, 2) for s in side.seconds],
                      "epoch_cpu_seconds": [round(s, 2) for s in side.cpu_seconds]}
                     for side in sides]
    result["load"] = {"model": name, "size": size, "load_1min_start": load_start,
                      "load_1min_end": load_average()}
    result["device"] = ", ".join(d.name for d in tf.config.list_logical_devices())
    return result


def _case_command(name, size, args, out):
    command = [sys.executable, str(Path(__file__).resolve()), "--case", f"{name}:{size}",
               "--out", str(out), "--batch-size", str(args.batch_size), "--steps",
               str(args.steps), "--epochs", str(args.epochs), "--option-epochs",
               str(args.option_epochs), "--options-size", str(args.options_size),
               "--options-models", ",".join(args.options_models), "--gen-batch",
               str(args.gen_batch), "--ddim-steps", ",".join(map(str, args.ddim_steps))]
    return command + (["--quick"] if args.quick else [])


def sampling_speed_rows(path):
    """The measured DDIM/DDPM rows of `sampling_speed.json` (written by the runner), if any."""
    try:
        result = json.loads(Path(path).read_text())
        return [{"size": result["size"], "task": row["task"], "batch": row["images"],
                 "images_per_second": round(row["images_per_second"], 3),
                 "network_calls": row["network_calls"]}
                for row in result["generation"] if row["model"] == "diffusion"]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def run_all(args):
    """Runs every (size, model) case in its own process and merges the results."""
    from benchmarks._common import load_average

    tables = {key: [] for key in ("training", "input", "options", "generation", "memory",
                                  "load", "raw")}
    failures, devices, start = [], set(), time.perf_counter()
    load_start = load_average()
    with tempfile.TemporaryDirectory() as parts:
        for size in args.sizes:
            for name in args.models:
                out = Path(parts) / f"{name}-{size}.json"
                print(f"[scale] {name} at {size} px", flush=True)
                try:
                    done = subprocess.run(_case_command(name, size, args, out),
                                          timeout=args.case_timeout)
                    code = done.returncode
                except subprocess.TimeoutExpired:
                    code = f"timed out after {args.case_timeout} s"
                if code != 0 or not out.exists():
                    failures.append({"model": name, "size": size, "error": str(code)})
                    continue
                case = json.loads(out.read_text())
                devices.add(case.pop("device"))
                for key, value in case.items():
                    tables[key] += value if isinstance(value, list) else [value]
    training, streaming = tables["training"], tables["input"]
    summary = {
        "benchmark": "scale", "quick": args.quick, "sizes": args.sizes,
        "batch_size": args.batch_size, "steps_per_epoch": args.steps,
        "timed_epochs": args.epochs, "options_size": args.options_size,
        "device": ", ".join(sorted(devices)), "cpu_count": os.cpu_count(),
        "load_1min_start": load_start, "load_1min_end": load_average(),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "target_ratio": TARGET_RATIO,
        "min_fit/bare": min((r["fit/bare"] for r in training), default=None),
        "min_streamed/memory": min((r["streamed/memory"] for r in streaming), default=None),
        "all_fit_meet_target": all(r["meets_0.9"] for r in training) and bool(training),
        "all_streaming_meet_target": all(r["meets_0.9"] for r in streaming) and bool(streaming),
    }
    measured = sampling_speed_rows(Path(args.out).parent / "sampling_speed.json")
    result = {**summary, "training": training, "input": streaming, "options": tables["options"],
              "generation": tables["generation"]}
    if measured:
        result["generation_measured_by_sampling_speed"] = measured
    result.update(memory=tables["memory"], load=tables["load"], raw=tables["raw"])
    if failures:
        result["failures"] = failures
    return result, failures


def _ints(text):
    return [int(part) for part in str(text).split(",") if part]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/scale.json", help="JSON result file")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 32 px, tiny networks, batch 4, 2 steps (~1 minute)")
    parser.add_argument("--sizes", default="64,128", help="image sides, comma-separated")
    parser.add_argument("--steps", type=int, default=3,
                        help="batches per epoch of the diffusion model; x2 for the denoiser, "
                        "x8 for the VAE (STEPS_FACTOR) (3)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per side (2)")
    parser.add_argument("--option-epochs", type=int, default=1,
                        help="timed epochs of each speed-up option (1)")
    parser.add_argument("--options-size", type=int, default=None,
                        help="size at which options are measured (default: the first size)")
    parser.add_argument("--options-models", default="vae,diffusion",
                        help="models whose speed-up options are measured (vae,diffusion: "
                        "the denoiser's U-Net behaves as the diffusion model's)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--gen-batch", type=int, default=4, help="generation batch (4)")
    parser.add_argument("--ddim-steps", default="10,25,50")
    parser.add_argument("--case-timeout", type=int, default=1200, help="seconds per case")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # MODEL:SIZE (child)
    args = parser.parse_args(argv)
    if args.quick and args.case is None:
        args.sizes, args.batch_size, args.steps, args.epochs = "32", 4, 2, 1
        args.options_models, args.gen_batch, args.ddim_steps = "vae", 2, "5,10"
        args.case_timeout = 300
    args.sizes, args.ddim_steps = _ints(args.sizes), _ints(args.ddim_steps)
    args.models = [m for m in args.models.split(",") if m]
    args.options_models = [m for m in args.options_models.split(",") if m]
    for model in args.models + args.options_models:
        if model not in MODELS:
            parser.error(f"--models must name models from {MODELS}. Received: {model!r}")
    if args.options_size is None:
        args.options_size = args.sizes[0]
    return args


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.case:  # child process: one model at one size
        name, size = args.case.split(":")
        out.write_text(json.dumps(run_case(name, int(size), args), indent=1) + "\n")
        return 0
    result, failures = run_all(args)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for key in ("training", "input", "options", "generation", "memory"):
        for row in result[key]:
            print(key, json.dumps(row), flush=True)
    print(f"[scale] wrote {out} in {result['wall_seconds']} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
