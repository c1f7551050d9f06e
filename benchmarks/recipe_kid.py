"""KID of a small pixel DDPM after a fixed wall-clock training budget, one recipe change at a time.

    PYTHONPATH=. python benchmarks/recipe_kid.py --budget 150 --out runs/recipe_kid

Phantom set (`lungkit.data.phantom`, 48 slices per class) at 32 px, one channel; a DDPM with a
(16, 32, 64) U-Net, 1 block per level, T = 1000 cosine, EMA 0.99, Adam 1e-3, batch 16. Each
config trains for `--budget` seconds (a callback stops it), then makes 144 DDIM-50 samples with
the EMA weights; KID (mean, std over 100 subsets of 100, `lungkit.evaluation.metrics.kid`) against the
144 real slices in the domain encoder's features (no InceptionV3 weights offline). The cosine
schedule's length is the baseline's step count. Appends one JSON line per config to
OUT/results.jsonl, with the steps done and the load average.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

from lungkit.data.images import load_data
from lungkit.data.phantom import make_phantom_dataset
from lungkit.evaluation.domain_encoder import DomainEncoder
from lungkit.evaluation.metrics import kid
from lungkit.models.diffusion import DiffusionModel
from lungkit.training.lr_schedules import make_schedule

CONFIGS = {  # cumulative: each adds one change to the one before
    "A baseline (eps, no EMA warm-up, constant lr)":
        dict(prediction="epsilon", ema_warmup=False),
    "B + v-prediction": dict(prediction="v", ema_warmup=False),
    "C + EMA warm-up": dict(prediction="v", ema_warmup=True),
    "D + lr warm-up/cosine": dict(prediction="v", ema_warmup=True, cosine=True),
    "E + min-SNR-5": dict(prediction="v", ema_warmup=True, cosine=True,
                          loss_weighting="min_snr"),
}


class Budget(keras.callbacks.Callback):
    def __init__(self, seconds):
        super().__init__()
        self.seconds, self.start, self.steps = seconds, None, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.start is None:  # the clock starts after the first (tracing) step
            self.start = time.perf_counter()
        elif time.perf_counter() - self.start > self.seconds:
            self.model.stop_training = True


def run(name, options, images, budget, total_steps, encoder, real):
    options = dict(options)
    cosine = options.pop("cosine", False)
    keras.utils.set_random_seed(0)
    model = DiffusionModel(image_size=32, channels=1, timesteps=1000, widths=(16, 32, 64),
                           blocks_per_level=1, ema_decay=0.99, seed=0, **options)
    lr = make_schedule("cosine", 1e-3, total_steps, 0.05) if cosine else 1e-3
    model.compile(optimizer=keras.optimizers.Adam(lr))
    data = tf.data.Dataset.from_tensor_slices(images).shuffle(len(images), seed=0).repeat()
    callback = Budget(budget)
    load_before = os.getloadavg()
    history = model.fit(data.batch(16), epochs=1, steps_per_epoch=10**6, verbose=0,
                        callbacks=[callback])
    load_after = os.getloadavg()
    samples = model.generate(len(images), steps=50, seed=0, progress=False, batch_size=48)
    mean, std = kid(encoder(samples), real, subsets=100, subset_size=100, seed=0)
    return {"config": name, "steps": callback.steps, "budget_s": budget,
            "final_loss": float(history.history["loss"][-1]), "kid_mean": float(mean),
            "kid_std": float(std), "loadavg_before": load_before, "loadavg_after": load_after}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=150.0)
    parser.add_argument("--out", default="runs/recipe_kid")
    parser.add_argument("--only", default=None, help="config letters to run, e.g. ABE")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp()) / "phantom"
    make_phantom_dataset(root, per_class=48, size=64, seed=0, progress=False)
    images, labels = load_data(root, size=32, progress=False)
    images = images[..., :1].astype("float32") / 255.0  # load_data gives uint8
    encoder = DomainEncoder.fit(images, labels, cache_dir=out, epochs=4)
    real = encoder(images)
    total_steps = None
    for name, options in CONFIGS.items():
        if args.only and name[0] not in args.only:
            continue
        result = run(name, options, images, args.budget, total_steps or 1000, encoder, real)
        total_steps = total_steps or result["steps"]  # the baseline's count sizes the cosine
        print(json.dumps(result), flush=True)
        with open(out / "results.jsonl", "a") as file:
            file.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
