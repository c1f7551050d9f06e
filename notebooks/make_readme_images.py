"""Runs the four notebooks headless and copies one figure of each into docs/images/.

The README's tour shows these images, so they come from real runs of the committed notebooks,
not from hand-pasted screenshots. Run it from the repository root after changing a notebook:

    .venv/bin/python notebooks/make_readme_images.py            # small CPU settings, ~10 min
    .venv/bin/python notebooks/make_readme_images.py --tiny     # smoke run, ~2 min
    .venv/bin/python notebooks/make_readme_images.py --demo runs/demo   # after `make demo`

`--demo RUN` runs no notebook: it copies the demo report's Figures 2 and 3 from the run
folder `RUN` to docs/images/demo_vae.png and demo_diffusion.png and rewrites the README's
block between the `DEMO_START` and `DEMO_END` markers: the two images, and a caption naming
the command, the machine and the wall time read from the run's metrics.json.

The default settings are each notebook's own defaults (small CPU runs that still learn the
anatomy) at 64 px for 01 and 02; `--tiny` uses the test suite's settings, whose models are
too short-trained to show much. The executed notebooks stay in `runs/readme_images/` to read.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES_DIR = ROOT / "docs" / "images"

# notebook -> (figure under its OUT_DIR copied to docs/images/<notebook prefix>.png, parameters)
# RUN = "quick": the CPU settings even on a machine with a GPU, so the images stay comparable
RUNS = {
    "01_data": ("figures/fig1_real_per_class.png", {"IMAGE_SIZE": 128, "CHANNELS": 1}),
    "02_vae": ("figures/fig2_vae_samples.png", {"RUN": "quick"}),
    "03_diffusion": ("figures/fig3_side_by_side.png", {"RUN": "quick"}),
    "04_compare": ("figures/speed.png", {"RUN": "quick"}),
}
TINY = {
    "01_data": {"IMAGE_SIZE": 32, "CHANNELS": 1, "PHANTOM_PER_CLASS": 4},
    "02_vae": {"IMAGE_SIZE": 32, "CHANNELS": 1, "PHANTOM_PER_CLASS": 4, "EPOCHS": 2,
               "BATCH_SIZE": 4, "LATENT_DIM": 8, "WIDTHS": [8, 16]},
    "03_diffusion": {"IMAGE_SIZE": 32, "CHANNELS": 1, "PHANTOM_PER_CLASS": 4,
                     "DENOISER_EPOCHS": 1, "DENOISER_WIDTHS": [8, 16], "DIFFUSION_EPOCHS": 1,
                     "DIFFUSION_WIDTHS": [8, 16], "TIMESTEPS": 50, "SAMPLING_STEPS": 5,
                     "DDPM_IMAGES": 1},
    "04_compare": {"OVERRIDES": {"models": ["vae", "denoiser", "diffusion"],
                                 "image_size": 32, "phantom_per_class": 6, "n_generate": 8, "features": "domain",
                                 "vae.epochs": 2, "denoiser.epochs": 1, "diffusion.epochs": 2,
                                 "diffusion.timesteps": 100, "diffusion.sampling_steps": 10}},
}


DEMO_FIGURES = {"figures/fig2_vae_samples.png": "demo_vae.png",
                "figures/fig3_diffusion_samples.png": "demo_diffusion.png"}
DEMO_START = "<!-- demo figures: written by notebooks/make_readme_images.py --demo -->"
DEMO_END = "<!-- end of demo figures -->"


def demo_caption(metrics):
    """The caption under the demo's figures: command, machine, wall time, claim verdicts."""
    machine, config = metrics.get("machine") or {}, metrics["config"]
    gpus = ", ".join(machine.get("gpus") or []) or "no GPU"
    verdicts = [c["verdict"] for c in metrics.get("claims") or []]
    tally = ", ".join(f"{verdicts.count(v)} {v}" for v in ("PASS", "FAIL", "INCONCLUSIVE")
                      if v in verdicts)
    return (f"`make demo` ({config['name']} preset: {config['image_size']} px, "
            f"{metrics['data']['n_train']} phantom training slices): the comparison took "
            f"{metrics['wall_seconds'] / 60:.1f} min after the install, on {machine.get('cores', '?')} cores of "
            f"{machine.get('cpu', 'an unknown CPU')}, {gpus}, TensorFlow "
            f"{machine.get('tensorflow', '?')}; claims: {tally or 'none'}. Top: the VAE's "
            "samples (Figure 2 of the report); bottom: the diffusion-family models, one row "
            "per model and sampler (Figure 3).")


def demo_block(metrics, images):
    """The README block between the markers: the demo's images and their caption."""
    lines = [DEMO_START, ""]
    lines += [f"![{alt}](docs/images/{name})" for alt, name in images]
    return "\n".join(lines + ["", f"*{demo_caption(metrics)}*", "", DEMO_END])


def write_demo_figures(run_dir, readme=ROOT / "README.md", images_dir=IMAGES_DIR):
    """Copies the demo run's Figures 2 and 3 to `images_dir` and rewrites the README block."""
    from lungkit.files import write_text
    from lungkit.viz import save_small_png

    run_dir, readme = Path(run_dir), Path(readme)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} not found: `--demo` takes the folder of a "
                                "finished `make demo` (or `lungkit compare`) run")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    text = readme.read_text(encoding="utf-8")
    if text.count(DEMO_START) != 1 or text.count(DEMO_END) != 1:
        raise ValueError(f"{readme} must hold the markers {DEMO_START!r} and {DEMO_END!r} "
                         "once each, in that order")
    missing = [name for name in DEMO_FIGURES if not (run_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} lacks {', '.join(missing)}: the run trained no "
                                "VAE or no diffusion model")
    images_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for source, name in DEMO_FIGURES.items():
        save_small_png(run_dir / source, images_dir / name)
        images.append(("VAE samples" if "vae" in name else "Diffusion samples", name))
    start, end = text.index(DEMO_START), text.index(DEMO_END) + len(DEMO_END)
    if start > end:
        raise ValueError(f"{readme}: {DEMO_END!r} comes before {DEMO_START!r}")
    write_text(readme, text[:start] + demo_block(metrics, images) + text[end:])
    return [images_dir / name for _, name in images]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the test suite's tiny settings")
    parser.add_argument("--only", nargs="*", choices=list(RUNS), help="run only these notebooks")
    parser.add_argument("--demo", metavar="RUN",
                        help="copy a demo run's Figures 2-3 into the README instead")
    parser.add_argument("--work", default=str(ROOT / "runs" / "readme_images"),
                        help="folder for the executed notebooks and their outputs")
    args = parser.parse_args(argv)
    if args.demo:
        for path in write_demo_figures(args.demo):
            print(f"{path.relative_to(ROOT)} ({path.stat().st_size / 1024:.0f} KB)")
        return 0

    import papermill

    from lungkit.viz import save_small_png

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    for name in args.only or RUNS:
        figure, parameters = RUNS[name]
        parameters = TINY[name] if args.tiny else parameters
        out_dir = work / name
        start = time.perf_counter()
        papermill.execute_notebook(
            str(ROOT / "notebooks" / f"{name}.ipynb"), str(work / f"{name}.ipynb"),
            parameters={**parameters, "OUT_DIR": str(out_dir), "USE_DRIVE": False},
            kernel_name="python3", cwd=str(work), progress_bar=False)
        target = save_small_png(out_dir / figure, IMAGES_DIR / f"{name}.png")
        print(f"{name}: {time.perf_counter() - start:.0f} s -> {target.relative_to(ROOT)} "
              f"({target.stat().st_size / 1024:.0f} KB)", flush=True)
    shutil.rmtree(work / "runs" / "data", ignore_errors=True)  # the phantom set, regenerated
    return 0


if __name__ == "__main__":
    sys.exit(main())
