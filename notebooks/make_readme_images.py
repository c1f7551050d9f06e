"""Runs the four notebooks headless and copies one figure of each into docs/images/.

The README's tour shows these images, so they come from real runs of the committed notebooks,
not from hand-pasted screenshots. Run it from the repository root after changing a notebook:

    .venv/bin/python notebooks/make_readme_images.py            # small CPU settings, ~10 min
    .venv/bin/python notebooks/make_readme_images.py --tiny     # smoke run, ~2 min

The default settings are each notebook's own defaults (small CPU runs that still learn the
anatomy) at 64 px for 01 and 02; `--tiny` uses the test suite's settings, whose models are
too short-trained to show much. The executed notebooks stay in `runs/readme_images/` to read.
"""

import argparse
import shutil
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
IMAGES_DIR = ROOT / "docs" / "images"
MAX_WIDTH = 1000  # pixels: README images are scaled down to this width, keeping them small

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


def save_small_png(source, target, max_width=MAX_WIDTH):
    """Copies a PNG, scaled down to `max_width` if wider, as an optimised palette PNG."""
    image = Image.open(source).convert("RGB")
    if image.width > max_width:
        height = round(image.height * max_width / image.width)
        image = image.resize((max_width, height), Image.Resampling.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the test suite's tiny settings")
    parser.add_argument("--only", nargs="*", choices=list(RUNS), help="run only these notebooks")
    parser.add_argument("--work", default=str(ROOT / "runs" / "readme_images"),
                        help="folder for the executed notebooks and their outputs")
    args = parser.parse_args(argv)

    import papermill

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
