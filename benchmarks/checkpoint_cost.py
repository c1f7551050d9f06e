"""What lungkit's training callbacks cost: `training.fit` against a plain `model.fit`.

`lungkit.training.fit` adds its callbacks (timing, the NaN guard, the CSV history, the
`Checkpoint` that writes the best and last models and the resumable backup every
`SAVE_SECONDS`, TensorBoard off here) to Keras' `fit`. This times one whole run of each on
its own fresh model, the two taking turns round by round, at the paper's scale by default
(1190 images, 128 px, RGB, the paper's VAE, batch 32). A side's time is the sum of its epochs
after the first (tracing) one, each epoch timed by a callback that runs after every other, so
that checkpoint writes fall inside the window, plus the time from the last epoch's end to
`fit`'s return (the final writes). Target: lungkit / plain <= 1.05 (the median over rounds of
the per-round ratio, process CPU time beside it). Random pixels: the cost does not depend on
them.

    .venv/bin/python benchmarks/checkpoint_cost.py --out runs/bench/checkpoint_cost.json
"""

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks._common import EpochTimer, load_average  # noqa: E402
from lungkit import training  # noqa: E402
from lungkit.checks import SAVE_SECONDS  # noqa: E402
from lungkit.data.pipeline import make_dataset  # noqa: E402
from lungkit.files import write_json  # noqa: E402
from lungkit.models.vae import VAE  # noqa: E402

TARGET = 1.05


class _Tail(EpochTimer):
    """EpochTimer that also records when the last epoch ended (for the tail to `fit`'s end)."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self.last_end, self.last_cpu_end = time.perf_counter(), time.process_time()


def _timed(run, timer):
    run()
    tail = time.perf_counter() - timer.last_end
    cpu_tail = time.process_time() - timer.last_cpu_end
    return sum(timer.seconds[1:]) + tail, sum(timer.cpu_seconds[1:]) + cpu_tail


def _plain_fit(model, dataset, timer, args, out_dir):
    training.ensure_built(model, model.distribute_strategy, dataset)  # as training.fit does
    model.fit(dataset, epochs=args.epochs, verbose=0, callbacks=[timer], shuffle=False)


def _lungkit_fit(model, dataset, timer, args, out_dir):
    training.fit(model, dataset, args.epochs, out_dir, callbacks=[timer], verbose=0,
                 tensorboard=False, save_seconds=args.save_seconds)


def one_round(images, args, workdir, index):
    seconds = {}
    for side, fit in (("plain", _plain_fit), ("lungkit", _lungkit_fit)):
        keras.utils.set_random_seed(index)
        model = VAE(image_size=args.size, channels=args.channels, seed=index)
        model.compile(keras.optimizers.Adam(1e-3))
        dataset = make_dataset(images, batch_size=args.batch_size, image_size=args.size,
                               channels=args.channels, seed=index)
        timer = _Tail()
        seconds[side] = _timed(functools.partial(fit, model, dataset, timer, args,
                                                 Path(workdir) / f"run{index}"), timer)
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON results file")
    parser.add_argument("--images", type=int, default=1190, help="images (1190, the dataset)")
    parser.add_argument("--size", type=int, default=128, help="image side (128, the paper)")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both sides (3)")
    parser.add_argument("--save-seconds", type=float, default=SAVE_SECONDS)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.size, args.epochs, args.rounds = 48, 32, 2, 1
    images = np.random.default_rng(0).random(
        (args.images, args.size, args.size, args.channels), dtype=np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for index in range(args.rounds):
            load = load_average()
            seconds = one_round(images, args, workdir, index)
            (plain, plain_cpu), (ours, ours_cpu) = seconds["plain"], seconds["lungkit"]
            rows.append({"round": index, "plain_s": round(plain, 2), "lungkit_s": round(ours, 2),
                         "ratio": round(ours / plain, 3), "cpu_ratio": round(ours_cpu / plain_cpu, 3),
                         "load_average": load})
            print(json.dumps(rows[-1]), flush=True)
    ratio = statistics.median(row["ratio"] for row in rows)
    result = {"benchmark": "checkpoint_cost", "quick": args.quick, "images": args.images,
              "size": args.size, "channels": args.channels, "batch_size": args.batch_size,
              "epochs": args.epochs, "save_seconds": args.save_seconds, "rounds": rows,
              "median_ratio": ratio,
              "median_cpu_ratio": statistics.median(row["cpu_ratio"] for row in rows),
              f"meets_{TARGET}": ratio <= TARGET}
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
