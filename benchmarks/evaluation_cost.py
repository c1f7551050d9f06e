"""What the evidence costs: seconds of each bootstrap interval the report computes.

Every KID in `evaluate` carries a bootstrap interval (`statistics.kid_interval`,
`metrics.KID_BOOTSTRAP_ROUNDS` resamples) and every claim one more (`kid_difference`,
`bootstrap` on sharpness; `statistics.ROUNDS` resamples). Their cost grows with the square of
the number of images (each resample gathers an n x n block of the kernel matrix), so this
times them at the sizes the presets use: 48 images (quick), 300 and 900 (classes), in
256 dimensions (the domain encoder's). Synthetic Gaussian features: the cost does not depend
on the values. Each figure is the median of `--repeats` runs, with the load average.

    .venv/bin/python benchmarks/evaluation_cost.py --out runs/bench/evaluation_cost.json
"""

import argparse
import json
import statistics as stats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

import numpy as np  # noqa: E402

from benchmarks._common import load_average  # noqa: E402
from lungkit.evaluation import statistics  # noqa: E402
from lungkit.evaluation.metrics import KID_BOOTSTRAP_ROUNDS  # noqa: E402
from lungkit.experiment import claims  # noqa: E402
from lungkit.files import write_json  # noqa: E402


def median_seconds(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return stats.median(times)


def measure(n, dims, repeats, rng):
    a, b, real = (rng.normal(shift, 1.0, (n, dims)) for shift in (0.0, 0.2, 0.0))
    sharpness = {"sharpness": {k: np.exp(rng.normal(8.0, 0.3, n))
                               for k in ("vae", "ddim", "real")}}

    tasks = {
        f"kid_interval ({KID_BOOTSTRAP_ROUNDS} resamples, per KID)":
            lambda: statistics.kid_interval(a, real, rounds=KID_BOOTSTRAP_ROUNDS),
        f"kid_difference ({statistics.ROUNDS} resamples, per claim)":
            lambda: statistics.kid_difference(a, b, real),
        f"sharpness bootstrap ({statistics.ROUNDS} resamples, per claim)":
            lambda: claims.blurrier({}, sharpness),  # the claim itself
    }
    return [{"n": n, "dims": dims, "task": task, "seconds": round(median_seconds(f, repeats), 3),
             "load_average": load_average()} for task, f in tasks.items()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON results file")
    parser.add_argument("--sizes", default="48,300,900", help="images per set (48,300,900)")
    parser.add_argument("--dims", type=int, default=256, help="feature dimensions (256)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (3)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    args = parser.parse_args(argv)
    sizes = [16, 32] if args.quick else [int(s) for s in args.sizes.split(",")]
    repeats = 1 if args.quick else args.repeats
    rng = np.random.default_rng(0)
    rows = [row for n in sizes for row in measure(n, args.dims, repeats, rng)]
    result = {"benchmark": "evaluation_cost", "quick": args.quick, "repeats": repeats,
              "intervals": rows}
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
