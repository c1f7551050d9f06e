"""Training throughput of `VAE.fit` against a bare `tf.function` step, same process.

Both sides train the same encoder and decoder (two VAE instances built with the same seed)
on the same random in-memory batches from one `tf.data` pipeline, with the same loss
(`lungkit.models.vae_layers.reconstruction_loss` + `kl_divergence`), the same optimizer type
(Adam) and the same `jit_compile` setting. Epochs alternate between the two sides so that
load from other processes hits both alike; the first epoch of each side is a warm-up
(tracing) and is not timed. Reports images/s for each (fastest timed epoch), their ratio
(fit / bare; 1.0 means `fit` adds nothing), the same ratio in process CPU time (robust to
other load on a shared machine), and seconds per epoch for the paper's 1,190 images.

    .venv/bin/python benchmarks/vae_throughput.py --size 128 --steps 10 --out vae.json
"""

import argparse
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks._common import Side, alternate, ratio  # noqa: E402
from lungkit.models.vae import VAE  # noqa: E402
from lungkit.models.vae_layers import kl_divergence, reconstruction_loss  # noqa: E402

PAPER_IMAGES = 1190  # IQ-OTH/NCCD, original release (Chen 2024 trains on it)
PAPER_SECONDS_PER_EPOCH = 20  # Chen (2024): about 20 s per epoch on a Colab GPU at 128 px


def make_bare_step(model, optimizer, jit_compile):
    """A plain compiled training step over `model.encoder` / `model.decoder`."""
    seeds = keras.random.SeedGenerator(0)
    variables = model.encoder.trainable_variables + model.decoder.trainable_variables

    @tf.function(jit_compile=jit_compile)
    def step(images):
        with tf.GradientTape() as tape:
            z_mean, z_log_var = model.encoder(images, training=True)
            epsilon = keras.random.normal(tf.shape(z_mean), seed=seeds)
            z = z_mean + tf.exp(0.5 * z_log_var) * epsilon
            reconstructions = model.decoder(z, training=True)
            recon = tf.reduce_mean(reconstruction_loss(images, reconstructions, "bce"))
            kl = tf.reduce_mean(kl_divergence(z_mean, z_log_var))
            loss = recon + kl
        grads = tape.gradient(loss, variables)
        optimizer.apply(grads, variables)
        return loss

    return step


def run(size, channels, batch_size, steps, epochs, latent_dim, jit_compile,
        steps_per_execution):
    rng = np.random.default_rng(0)
    images = rng.random((steps * batch_size, size, size, channels), dtype=np.float32)
    dataset = (tf.data.Dataset.from_tensor_slices(images).batch(batch_size, drop_remainder=True)
               .prefetch(tf.data.AUTOTUNE))

    fit_model = VAE(image_size=size, channels=channels, latent_dim=latent_dim, seed=0)
    fit_model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=jit_compile,
                      steps_per_execution=steps_per_execution)
    bare_model = VAE(image_size=size, channels=channels, latent_dim=latent_dim, seed=0)
    bare_step = make_bare_step(bare_model, keras.optimizers.Adam(1e-4), jit_compile)

    # Sides take turns one epoch at a time; the first epoch of each is a warm-up (tracing).
    fit_side = Side.fit("fit", fit_model, dataset)
    bare_side = Side.bare("bare", bare_step, dataset)
    alternate([fit_side, bare_side], epochs)
    images_per_epoch = steps * batch_size
    fit_ips = images_per_epoch / fit_side.best_seconds()
    bare_ips = images_per_epoch / bare_side.best_seconds()
    ratios = ratio(fit_side, bare_side)
    return {
        "image_shape": [size, size, channels], "batch_size": batch_size,
        "steps_per_epoch": steps, "timed_epochs": epochs, "latent_dim": latent_dim,
        "jit_compile": jit_compile, "steps_per_execution": steps_per_execution,
        "parameters": fit_model.count_params(),
        "fit_images_per_second": round(fit_ips, 2),
        "bare_images_per_second": round(bare_ips, 2),
        "ratio_fit_over_bare": ratios["best"],
        "ratio_fit_over_bare_cpu_time": ratios["cpu"],
        # Each fit epoch against the bare epoch that ran right after it: drift in the load
        # from other processes cancels within a pair.
        "paired_median_ratio_fit_over_bare": ratios["paired"],
        "fit_epoch_seconds": [round(s, 3) for s in fit_side.seconds],
        "bare_epoch_seconds": [round(s, 3) for s in bare_side.seconds],
        "fit_epoch_cpu_seconds": [round(s, 3) for s in fit_side.cpu_seconds],
        "bare_epoch_cpu_seconds": [round(s, 3) for s in bare_side.cpu_seconds],
        "seconds_per_epoch_1190_images_fit": round(PAPER_IMAGES / fit_ips, 1),
        "paper_seconds_per_epoch_colab_gpu": PAPER_SECONDS_PER_EPOCH,
        "device": (tf.config.list_physical_devices("GPU") or ["CPU"])[0].__str__(),
        "cpu_threads": os.cpu_count(), "machine": platform.machine(),
        "tensorflow": tf.__version__, "keras": keras.__version__,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="image side (default 128)")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="batches per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per side")
    parser.add_argument("--latent-dim", type=int, default=128)
    parser.add_argument("--jit", choices=("off", "on"), default="off",
                        help="XLA for both sides (default off, Keras' own choice on CPU)")
    parser.add_argument("--steps-per-execution", type=int, default=1)
    parser.add_argument("--out", help="write the result as JSON here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke-test settings: 32 px, batch 4, 2 steps, 1 timed epoch")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch_size, args.steps, args.epochs, args.latent_dim = 32, 4, 2, 1, 8
    result = run(args.size, args.channels, args.batch_size, args.steps, args.epochs,
                 args.latent_dim, args.jit == "on", args.steps_per_execution)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
