"""`python -m benchmarks --out benchmarks/results.md`: runs every benchmark, writes one file.

Each benchmark is a script in this folder that takes `--out FILE.json` and writes its
measurements there; this runner starts each in its own process (so TensorFlow state and
thread pools never leak between them), then renders all JSON results into one Markdown file
that begins with a description of the machine.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (script, extra arguments) in the order they appear in the results file
BENCHMARKS = (
    ("phantom_speed", []),
    ("vae_throughput", []),
    ("sampling_speed", []),
    ("scale", []),
    ("unet_speed", []),
    ("checkpoint_cost", []),
    ("evaluation_cost", []),
)


def describe_machine():
    """A dict of facts about this machine: CPU, cores, memory, accelerators, versions."""
    facts = {"python": platform.python_version(), "platform": platform.platform(),
             "cpu_count": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                facts["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    probe = subprocess.run(
        [sys.executable, "-c", "import tensorflow as tf, keras; print(tf.__version__, "
         "keras.__version__, len(tf.config.list_physical_devices('GPU')))"],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if probe.returncode == 0 and probe.stdout.split():
        tf_version, keras_version, gpus = probe.stdout.split()[-3:]
        facts.update(tensorflow=tf_version, keras=keras_version, gpus=int(gpus))
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if gpu.returncode == 0:
            facts["gpu"] = gpu.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return facts


def render(value, depth=0):
    """Renders a JSON result as Markdown: lists of flat dicts become tables."""
    lines = []
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        keys = list(dict.fromkeys(k for row in value for k in row))
        lines.append("| " + " | ".join(keys) + " |")
        lines.append("|" + "---|" * len(keys))
        for row in value:
            lines.append("| " + " | ".join(_cell(row.get(k)) for k in keys) + " |")
        lines.append("")
    elif isinstance(value, dict):
        scalars = {k: v for k, v in value.items() if not isinstance(v, (dict, list))}
        for key, item in scalars.items():
            lines.append(f"- **{key}**: {_cell(item)}")
        if scalars:
            lines.append("")
        for key, item in value.items():
            if isinstance(item, (dict, list)):
                lines.append(f"{'#' * min(depth + 4, 6)} {key}")
                lines.append("")
                lines += render(item, depth + 1)
    else:
        lines.append(_cell(value))
        lines.append("")
    return lines


def _cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return "–" if value is None else str(value)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results.md"), help="Markdown results file")
    parser.add_argument("--only", default=None, help="comma-separated benchmark names")
    parser.add_argument("--quick", action="store_true",
                        help="pass --quick to each benchmark (smaller sizes; for smoke tests)")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    sections = [f"# lungkit benchmarks\n\nRun {time.strftime('%Y-%m-%d %H:%M %Z')} with "
                f"`python -m benchmarks`.\n\n## Machine\n"]
    sections += render(machine)
    failures = 0
    for name, extra in BENCHMARKS:
        if only and name not in only:
            continue
        script = HERE / f"{name}.py"
        if not script.exists():
            continue
        json_path = out.parent / f"{name}.json"
        command = [sys.executable, str(script), "--out", str(json_path), *extra]
        if args.quick:
            command.append("--quick")
        print(f"[benchmarks] {' '.join(command)}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        elapsed = time.perf_counter() - start
        sections.append(f"## {name}\n\n`python benchmarks/{name}.py` ({elapsed:.0f} s)\n")
        if done.returncode != 0 or not json_path.exists():
            failures += 1
            sections.append(f"**failed** with exit code {done.returncode}\n")
            continue
        sections += render(json.loads(json_path.read_text()))
    out.write_text("\n".join(sections) + "\n")
    print(f"[benchmarks] wrote {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
