"""Phantom generator speed: slices per second on one core, JPEG writing included.

    python benchmarks/phantom_speed.py --size 512 --count 120 --out benchmarks/phantom_speed.json

Writes a full phantom dataset (`make_phantom_dataset`, `count / 3` slices per class) into a
temporary folder and reports slices per second by wall clock and by the process's CPU time.
Thread pools are pinned to one thread before numpy is imported; on a machine shared with
other work the CPU-time rate is the steadier of the two (the 1-minute load average is saved
alongside). Target (issue 3): at least 50 slices/s of 512 x 512 on one core.
"""

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"  # before numpy is imported: one core

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

import numpy as np  # noqa: E402

from lungkit.data.phantom import make_phantom_dataset  # noqa: E402

TARGET_SLICES_PER_SECOND = 50.0  # issue 3, "Done when"


def measure(size, count, seed=0):
    """Generates `count` slices (rounded up to a multiple of 3) and times it.

    Returns:
        dict with slices, seconds (wall and CPU) and the two rates in slices per second.
    """
    per_class = max(1, -(-count // 3))
    with tempfile.TemporaryDirectory() as root:
        make_phantom_dataset(Path(root) / "warm-up", per_class=1, size=size, progress=False)
        wall, cpu = time.perf_counter(), time.process_time()
        dataset_dir = make_phantom_dataset(Path(root) / "timed", per_class=per_class, size=size,
                                           seed=seed, progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        files = list(dataset_dir.rglob("*.jpg"))
        megabytes = sum(f.stat().st_size for f in files) / 2**20
    slices = 3 * per_class
    return {"size": size, "slices": slices, "wall_seconds": round(wall, 3),
            "cpu_seconds": round(cpu, 3), "slices_per_second_wall": round(slices / wall, 1),
            "slices_per_second_cpu": round(slices / cpu, 1),
            "megabytes_written": round(megabytes, 2)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="slice side in pixels")
    parser.add_argument("--count", type=int, default=120, help="slices to generate (all classes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/phantom_speed.json", help="JSON result file")
    parser.add_argument("--quick", action="store_true", help="smoke test: 6 slices of 128 px")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.count = 128, 6

    result = measure(args.size, args.count, args.seed)
    result.update({
        "benchmark": "phantom_speed",
        "threads": 1,
        "target_slices_per_second": TARGET_SLICES_PER_SECOND,
        "meets_target": result["slices_per_second_cpu"] >= TARGET_SLICES_PER_SECOND,
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    })
    print(f"phantom_speed: {result['slices']} slices of {args.size}x{args.size} (JPEG written): "
          f"{result['slices_per_second_wall']} slices/s wall, "
          f"{result['slices_per_second_cpu']} slices/s CPU time on one core "
          f"(target {TARGET_SLICES_PER_SECOND:g}; load average {result['load_average_1min']})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
