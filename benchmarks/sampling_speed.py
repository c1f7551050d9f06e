"""Generation and training speed of every model, in one run: images per second.

Generation: VAE decoding (`VAE.generate`), the paper's denoiser (`UNetDenoiser.restore`, one
pass), and `DiffusionModel.generate` with DDIM at 10 / 25 / 50 steps, DPM-Solver++ at 20 and
the real 1000-step DDPM loop (on a small batch; DDIM-50 is timed again at that batch size so
the DDPM / DDIM ratio compares equal batches), and the latent hybrid `LatentDiffusion` with
DDIM-50 on its 8x smaller latent, decoding included. Training: images/s of `fit()` for the VAE,
the denoiser and the diffusion model.
Weights are random (untrained): speed does not depend on them. Each measurement follows a
warm-up call (tracing) and is the best of `--repeats` runs, which resists load from other
processes. Writes JSON to `--out` and a Markdown table beside it (`.md`).

    .venv/bin/python benchmarks/sampling_speed.py --size 64 --out runs/bench/sampling.json
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks._common import EpochTimer, best_seconds  # noqa: E402
from lungkit.models.denoiser import UNetDenoiser  # noqa: E402
from lungkit.models.diffusion import DiffusionModel  # noqa: E402
from lungkit.models.latent import LatentDiffusion  # noqa: E402
from lungkit.models.vae import VAE  # noqa: E402

TARGET_DDIM_SPEEDUP = 15.0  # issue 5: DDIM-50 at least 15x faster per image than DDPM-1000


def training_images_per_second(model, images, batch_size, epochs):
    """`fit()` images/s: the fastest epoch after the first (tracing) one."""
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    timer = EpochTimer()
    model.fit(images, batch_size=batch_size, epochs=epochs + 1, verbose=0, callbacks=[timer],
              shuffle=False)
    return len(images) / min(timer.seconds[1:])


def run(args):
    keras.utils.set_random_seed(0)
    size, channels = args.size, args.channels
    rng = np.random.default_rng(0)
    train_images = rng.uniform(0, 1, (args.train_batch * args.train_steps, size, size, channels))
    train_images = train_images.astype("float32")
    rows = []  # (model, task, images, seconds, network calls per image)

    def record(model_name, task, n, seconds, calls):
        rows.append({"model": model_name, "task": task, "images": n, "seconds": seconds,
                     "images_per_second": n / seconds, "network_calls": calls,
                     "ms_per_call_per_batch": 1000 * seconds / max(calls, 1)
                     * min(n, args.batch) / n})
        print(f"{model_name:10s} {task:28s} {n / seconds:10.2f} images/s", flush=True)

    vae = VAE(image_size=size, channels=channels, seed=0)
    n = args.batch
    record("VAE", "decode (generate)", n,
           best_seconds(lambda: vae.generate(n, seed=0, batch_size=args.batch), args.repeats), 1)

    denoiser = UNetDenoiser(image_size=size, channels=channels, seed=0)
    noisy = train_images[:n]
    record("denoiser", "restore (1 pass)", n,
           best_seconds(lambda: denoiser.restore(noisy, steps=1, batch_size=args.batch),
                        args.repeats), 1)

    diffusion = DiffusionModel(image_size=size, channels=channels, seed=0)

    def sampler(name, steps, count, batch):
        return lambda: diffusion.generate(count, steps=steps, sampler=name, seed=0,
                                          batch_size=batch, progress=False)

    for steps in (10, 25, 50):
        record("diffusion", f"DDIM {steps} steps", n,
               best_seconds(sampler("ddim", steps, n, args.batch), args.repeats), steps)
    # The hybrid at its defaults (latent 8x smaller per side, 4 channels), decoding included.
    latent = LatentDiffusion(image_size=size, channels=channels, seed=0)
    record("latent", "DDIM 50 steps + decode", n,
           best_seconds(lambda: latent.generate(n, steps=50, seed=0, batch_size=args.batch,
                                                progress=False), args.repeats), 50)
    record("diffusion", "DPM-Solver++ 20 steps", n,
           best_seconds(sampler("dpm++", 20, n, args.batch), args.repeats), 20)
    small = args.ddpm_batch
    ddim_small = best_seconds(sampler("ddim", 50, small, small), args.repeats)
    record("diffusion", f"DDIM 50 steps (batch {small})", small, ddim_small, 50)
    # Warm-up: DDPM's step (with fresh noise) is the same trace as DDIM's with eta = 1.
    diffusion.generate(small, steps=2, eta=1.0, seed=0, batch_size=small, progress=False)
    start = time.perf_counter()
    sampler("ddpm", None, small, small)()  # one real 1000-step loop
    ddpm = time.perf_counter() - start
    record("diffusion", f"DDPM {diffusion.timesteps} steps (batch {small})", small, ddpm,
           diffusion.timesteps)

    train = {}
    for name, model in (("VAE", VAE(image_size=size, channels=channels, seed=0)),
                        ("denoiser", UNetDenoiser(image_size=size, channels=channels, seed=0)),
                        ("diffusion", DiffusionModel(image_size=size, channels=channels, seed=0))):
        train[name] = training_images_per_second(model, train_images, args.train_batch,
                                                 args.train_epochs)
        print(f"{name:10s} {'training (fit)':28s} {train[name]:10.2f} images/s", flush=True)

    speedup = ddpm / ddim_small
    return {
        "size": size, "channels": channels, "batch": args.batch, "ddpm_batch": small,
        "repeats": args.repeats, "train_batch": args.train_batch,
        "device": ", ".join(d.name for d in tf.config.list_logical_devices()),
        "gpus": len(tf.config.list_physical_devices("GPU")), "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "tensorflow": tf.__version__,
        "keras": keras.__version__, "generation": rows, "training_images_per_second": train,
        "ddim50_speedup_over_ddpm1000_per_image": speedup,
        "target_speedup": TARGET_DDIM_SPEEDUP, "target_met": bool(speedup >= TARGET_DDIM_SPEEDUP),
        "model_parameters": {"VAE": vae.count_params(), "denoiser": denoiser.count_params(),
                             "diffusion (online network)": diffusion.network.count_params(),
                             "latent (autoencoder)": latent.autoencoder.count_params(),
                             "latent (online network)": latent.diffusion.network.count_params()},
    }


def markdown(result):
    lines = [f"# Sampling and training speed ({result['size']} px, {result['channels']} "
             f"channels, untrained weights)", "",
             f"Device: {result['device']} ({result['cpu_count']} CPUs, {result['gpus']} GPUs), "
             f"TensorFlow {result['tensorflow']}, Keras {result['keras']}. Generation batch "
             f"{result['batch']}; best of {result['repeats']} after a warm-up.", "",
             "| model | task | network calls | images/s | ms per call (one batch) |",
             "|---|---|---:|---:|---:|"]
    for row in result["generation"]:
        lines.append(f"| {row['model']} | {row['task']} | {row['network_calls']} | "
                     f"{row['images_per_second']:.3f} | {row['ms_per_call_per_batch']:.1f} |")
    lines += ["", "| model | training images/s (fit) |", "|---|---:|"]
    lines += [f"| {name} | {value:.1f} |"
              for name, value in result["training_images_per_second"].items()]
    lines += ["", f"DDIM-50 is **{result['ddim50_speedup_over_ddpm1000_per_image']:.1f}x** "
                  f"faster per image than DDPM-1000 at batch {result['ddpm_batch']} "
                  f"(target >= {result['target_speedup']:.0f}x: "
                  f"{'met' if result['target_met'] else 'NOT met'})."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, choices=(32, 64, 128))
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--batch", type=int, default=16, help="generation batch size")
    parser.add_argument("--ddpm-batch", type=int, default=4,
                        help="batch of the 1000-step DDPM loop (and of the DDIM-50 it is "
                             "compared with)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=4, help="batches per epoch")
    parser.add_argument("--train-epochs", type=int, default=2, help="timed epochs")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/sampling_speed.json"))
    parser.add_argument("--quick", action="store_true",
                        help="smallest settings (32 px, tiny batches): a smoke run, not a measurement")
    args = parser.parse_args()
    if args.quick:
        args.size, args.batch, args.ddpm_batch, args.repeats = 32, 2, 1, 1
        args.train_batch, args.train_steps, args.train_epochs = 2, 2, 1
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
