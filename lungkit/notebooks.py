"""What the training notebooks run: the quick CPU settings, or the paper's when a GPU is there.

Notebooks 02-04 have a parameter `RUN = "auto"` ("auto" | "quick" | "paper") and parameters
that default to None, meaning "from the run". `run_settings` fills those in: "auto" picks
the paper's run when TensorFlow sees a GPU (Colab with a GPU runtime) and the quick CPU run
otherwise; a value given explicitly (in the parameters cell or by papermill, which injects
its values after that cell) always wins. The paper's numbers come from
`lungkit.experiment.PRESETS["paper"]`; TensorFlow is imported only to look for a GPU.
"""

from lungkit.experiment.config import PRESETS

RUNS = ("auto", "quick", "paper")
PAPER = PRESETS["paper"]
# IQ-OTH/NCCD has 1,190 slices (1,097 in the Kaggle copy). The paper's run on the phantom set
# uses as many, 400 per class, so that an epoch is as many optimizer steps as on the real data.
PAPER_PHANTOM_PER_CLASS = 400
# The DDPM of notebook 03 (not in the paper) at 128 px, 3 channels: 400 epochs of ~1,200
# slices at batch 16 are 30,000 optimizer steps (480,000 images seen). For scale, keras-io's
# DDIM example, with the same U-Net widths (32, 64, 96, 128) and 2 blocks per level, asks for
# at least 50 epochs of 5 x ~6,500 flowers at batch 64 (~25,000 steps) for good 64 px samples,
# and CT slices vary far less than flowers. Time on a T4 (not measured here, no GPU):
# this U-Net trains at 4.3 images/s at 128 px on 2 CPU cores (benchmarks/results.md), about
# 20 GFLOP per image; a T4 sustaining 3-4 of its 8 fp32 TFLOP/s gives ~150-200 images/s, so
# ~6-8 s per epoch and about an hour for 400 epochs, checkpointed every epoch on Drive.
PAPER_DDPM_EPOCHS = 400

# notebook -> run -> the settings that differ between the runs (notebook variable names)
SETTINGS = {
    "02_vae": {
        "quick": {"PHANTOM_PER_CLASS": 40, "IMAGE_SIZE": 64, "CHANNELS": 1, "EPOCHS": 30,
                  "BATCH_SIZE": 16},
        "paper": {"PHANTOM_PER_CLASS": PAPER_PHANTOM_PER_CLASS, "IMAGE_SIZE": PAPER.image_size,
                  "CHANNELS": PAPER.channels, "EPOCHS": PAPER.vae.epochs,
                  "BATCH_SIZE": PAPER.vae.batch_size},
    },
    "03_diffusion": {
        "quick": {"PHANTOM_PER_CLASS": 40, "IMAGE_SIZE": 32, "CHANNELS": 1,
                  "DIFFUSION_EPOCHS": 40, "DIFFUSION_WIDTHS": [16, 32, 64],
                  "DIFFUSION_BLOCKS": 1, "DIFFUSION_LEARNING_RATE": 1e-3, "EMA_DECAY": 0.99},
        "paper": {"PHANTOM_PER_CLASS": PAPER_PHANTOM_PER_CLASS, "IMAGE_SIZE": PAPER.image_size,
                  "CHANNELS": PAPER.channels, "DIFFUSION_EPOCHS": PAPER_DDPM_EPOCHS,
                  "DIFFUSION_WIDTHS": list(PAPER.diffusion.widths),
                  "DIFFUSION_BLOCKS": PAPER.diffusion.blocks_per_level,
                  "DIFFUSION_LEARNING_RATE": PAPER.diffusion.learning_rate,
                  "EMA_DECAY": PAPER.diffusion.ema_decay},
    },
    "04_compare": {"quick": {"PRESET": "quick"}, "paper": {"PRESET": "paper"}},
}


def find_gpu():
    """The name of the first GPU TensorFlow sees (e.g. "Tesla T4"), or None without one."""
    from lungkit import require_tensorflow

    require_tensorflow("lungkit.notebooks.find_gpu")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)


def _channels(count):
    return f"{count} channel" + ("" if count == 1 else "s")


def summary(notebook, settings):
    """One line naming the settings that make a run expensive, e.g. "128 px, 3 channels, ..."."""
    if notebook == "04_compare":
        config = PRESETS[settings["PRESET"]]
        return (f"preset {settings['PRESET']!r}: {config.image_size} px, "
                f"{_channels(config.channels)}, VAE {config.vae.epochs} epochs, denoiser "
                f"{config.denoiser.epochs}, DDPM {config.diffusion.epochs}")
    size = f"{settings['IMAGE_SIZE']} px, {_channels(settings['CHANNELS'])}"
    if notebook == "02_vae":
        return f"{size}, VAE {settings['EPOCHS']} epochs"
    return (f"{size}, DDPM {settings['DIFFUSION_EPOCHS']} epochs of a U-Net "
            f"{settings['DIFFUSION_WIDTHS']}")


def run_settings(notebook, run="auto", gpu=None, **given):
    """The settings a notebook runs with, and one line saying which run that is and why.

    Args:
        notebook: `"02_vae"`, `"03_diffusion"` or `"04_compare"`.
        run: `"auto"` (the paper's run with a GPU, the quick one without), `"quick"` (minutes
            on a CPU) or `"paper"` (Chen 2024: 128 px, 3 channels, VAE 200 epochs, denoiser
            10 epochs; the longer DDPM of 03).
        gpu: None looks for one with TensorFlow; False means none; True or a name
            (`"Tesla T4"`) means one (for tests and for callers that already know).
        **given: the notebook's values by name (`IMAGE_SIZE=64`); None means "from the run".
            Names must be among the run's settings, so a misspelt one is an error.

    Returns:
        `(settings, description)`: every setting of the run (given values win) and a line
        for the notebook's first output, e.g. "GPU found (Tesla T4): the paper's run: ...".
    """
    if notebook not in SETTINGS:
        raise ValueError(f"`notebook` must be one of {tuple(SETTINGS)}. "
                         f"Received: notebook={notebook!r}")
    if run not in RUNS:
        raise ValueError(f"`run` must be one of {RUNS}. Received: run={run!r}")
    unknown = sorted(set(given) - set(SETTINGS[notebook]["quick"]))
    if unknown:
        raise ValueError(f"{notebook} takes {sorted(SETTINGS[notebook]['quick'])} from the run. "
                         f"Received: {unknown}")
    if "PRESET" in given and given["PRESET"] is not None and given["PRESET"] not in PRESETS:
        raise ValueError(f"`PRESET` must be one of {sorted(PRESETS)}. "
                         f"Received: PRESET={given['PRESET']!r}")
    if run == "auto":
        gpu = find_gpu() if gpu is None else gpu
        chosen = "paper" if gpu else "quick"
        if gpu:
            found = f"GPU found ({gpu})" if isinstance(gpu, str) else "GPU found"
            reason = f"{found}: the paper's run"
            other = "RUN = 'quick' runs the CPU settings."
        else:
            reason = "No GPU: the quick CPU run"
            other = ("RUN = 'paper' runs the paper's settings (hours on a CPU; in Colab pick "
                     "a GPU runtime: Runtime > Change runtime type).")
    else:
        chosen = run
        reason = f"RUN = {run!r}: " + ("the paper's run" if run == "paper" else "the quick run")
        other = ""
    explicit = {name: value for name, value in given.items() if value is not None}
    settings = {**SETTINGS[notebook][chosen], **explicit}
    description = f"{reason}: {summary(notebook, settings)}."
    if explicit:
        description += " Given: " + ", ".join(f"{name}={value!r}"
                                              for name, value in explicit.items()) + "."
    return settings, f"{description} {other}".strip()
