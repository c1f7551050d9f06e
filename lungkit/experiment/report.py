"""Writes the comparison report: report.md, a self-contained report.html, figures/*.png.

The report is built once as a list of blocks (headings, paragraphs, tables, figures) and
rendered twice by `lungkit.experiment.render`, to Markdown and to HTML with the figures
embedded, so the two never disagree.
`metrics.json` is written by `lungkit.experiment`; this module only reads the results dict.
"""

import datetime
import logging
from pathlib import Path

import numpy as np

from lungkit.data.labels import CLASS_NAMES
from lungkit.experiment.figures import draw_figures
from lungkit.experiment.render import render_html, render_markdown
from lungkit.files import write_text

logger = logging.getLogger(__name__)

# (key in metrics, column title, format) for the results table
METRIC_COLUMNS = (
    ("sharpness_mean", "Sharpness (var. of Laplacian)", "{:.1f}"),
    ("ms_ssim_diversity", "MS-SSIM (lower = diverse)", "{:.3f}"),
    ("memorization_share", "Near-copies", "{:.0%}"),
    ("class_fidelity", "Class fidelity", "{:.0%}"),
    ("tstr_accuracy", "TSTR accuracy", "{:.0%}"),
)
# columns shown only when some row has a value (class-conditional runs)
OPTIONAL_COLUMNS = ("class_fidelity", "tstr_accuracy")


def _metric_columns(results):
    """`METRIC_COLUMNS` less the optional ones that no model (nor the real row) measured."""
    measured = [v.get("metrics") or {} for e in results["models"].values()
                for v in e["variants"].values()] + [results.get("real_metrics") or {}]
    return [column for column in METRIC_COLUMNS if column[0] not in OPTIONAL_COLUMNS
            or any(m.get(column[0]) is not None for m in measured)]


def _fmt(value, pattern):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return pattern.format(value)


def _results_table(results):
    columns = _metric_columns(results)
    header = ["Model", "Parameters", "s / epoch", "Train img/s", "Generate img/s"]
    header += [title for _, title, _ in columns]
    rows = []
    for entry in results["models"].values():
        for variant in entry["variants"].values():
            metrics = variant.get("metrics") or {}
            row = [variant["label"], f"{entry['parameters']:,}",
                   _fmt(entry["seconds_per_epoch"], "{:.2f}"),
                   _fmt(entry["train_images_per_second"], "{:.1f}"),
                   _fmt(variant["images_per_second"], "{:.3g}")]
            row += [_fmt(metrics.get(key), pattern) for key, _, pattern in columns]
            rows.append(row)
    real = results.get("real_metrics")
    if real:
        row = ["Real training images (reference)", "–", "–", "–", "–"]
        row += [_fmt(real.get(key), pattern) for key, _, pattern in columns]
        rows.append(row)
    return header, rows


def _scored_rows(results):
    """`(label, metrics)` of every evaluated variant, then the real reference row."""
    rows = [(v["label"], v["metrics"]) for e in results["models"].values()
            for v in e["variants"].values() if v.get("metrics")]
    if results.get("real_metrics"):
        rows.append(("Real training images (reference)", results["real_metrics"]))
    return rows


def _feature_table(results, space):
    """FID, KID [interval], precision and recall of every model in one feature space."""
    header = ["Model", "FID", "KID [95% interval]", "Precision", "Recall"]
    rows = []
    for label, metrics in _scored_rows(results):
        value = metrics.get(f"kid[{space}]")
        if value is None:
            continue
        low, high = metrics.get(f"kid_interval[{space}]") or (None, None)
        fid = _fmt(metrics.get(f"fid[{space}]"), "{:.3g}")
        if metrics.get(f"fid_reliable[{space}]") is False:
            fid += " (unreliable)"
        rows.append([label, fid, f"{value:.3g} [{_fmt(low, '{:.3g}')}, {_fmt(high, '{:.3g}')}]",
                     _fmt(metrics.get(f"precision[{space}]"), "{:.2f}"),
                     _fmt(metrics.get(f"recall[{space}]"), "{:.2f}")])
    return header, rows


def _feature_blocks(results):
    """One table per feature space, its size notes, and whether the spaces rank alike."""
    names = results.get("feature_extractors") or {}
    if not names:
        return []
    blocks = [("h2", "FID, KID, precision and recall per feature space"), ("p", (
        "Every number below is named by the feature space it was computed in. KID: unbiased "
        "squared MMD with the cubic kernel (x.y / D + 1)^3, unitless, mean over random subsets "
        "of min(1000, n) images per set, and its 95% bootstrap interval over images (0 is a "
        "perfect match; the estimate can be slightly negative). FID: the Fréchet distance of "
        "Gaussians fitted to the features, marked unreliable where a set has fewer images than "
        "the space has dimensions (mostly bias then). Precision: the share of samples that lie "
        "within the real slices' k-nearest-neighbour balls (k = 3), i.e. how many samples look "
        "real. Recall: the share of real slices within the samples' balls, i.e. how much of the "
        "real variety the samples cover."))]
    for space, name in names.items():
        header, rows = _feature_table(results, space)
        if rows:
            any_metrics = next(m for _, m in _scored_rows(results)
                               if m.get(f"kid[{space}]") is not None)
            blocks.append(("p", f"**{space}** (`{name}`, "
                           f"{any_metrics.get(f'feature_dims[{space}]')} dimensions)"
                           + (", the space of the claims" if space == results.get("claim_space")
                              else "")))
            blocks.append(("table", (header, rows)))
    blocks.append(("p", _agreement_text(results.get("extractor_agreement"))))
    return blocks


def _agreement_text(agreement):
    """Whether the feature spaces order the models alike, in one sentence."""
    if not agreement or agreement.get("same_order") is None:
        return "Ranking across feature spaces: fewer than two models or spaces to compare."
    taus = ", ".join(f"{pair} {_fmt(tau, '{:.2f}')}"
                     for pair, tau in agreement["kendall_tau"].items())
    orders = "; ".join(f"{space}: {' < '.join(order)}"
                       for space, order in agreement["orders"].items())
    verdict = ("agree on" if agreement["same_order"] else "disagree on")
    return (f"Ranking by KID (best first): the feature spaces **{verdict}** the order of the "
            f"models (Kendall's tau {taus}). {orders}.")


PROBE_LABELS = {"perfect": "Perfect (held-out real)", "memorizer": "Memorizer (training copies)",
                "class_collapse": "Class collapse (one class)", "mode_collapse": "Mode collapse",
                "flip": "Vertical flip", "shuffle": "4x4 patch shuffle", "blur": "Blur 1 px",
                "noise": "Noise 0.1"}


def _probe_blocks(results):
    """The sanity probes: what each feature space must see, and whether it does."""
    probes = results.get("probes")
    if not probes:
        return []
    spaces = list(probes["extractors"])
    rows = []
    for probe, by_space in probes["probes"].items():
        cells = []
        for space in spaces:
            row = by_space.get(space) or {}
            effect = "" if row.get("effect") is None else f" {row['effect']:.3g}"
            cells.append(f"{row.get('verdict', 'N/A')}{effect}")
        rows.append([PROBE_LABELS.get(probe, probe), probes["criteria"][probe], *cells])
    passed = "; ".join(f"{space} {done} of {judged}"
                       for space, (done, judged) in probes["passed"].items())
    return [("h2", "Sanity probes: does each feature space rank a perfect generator first?"),
            ("p", (
                f"Held-out real slices are split in two: {probes['n_reference']} are the "
                f"reference, {probes['n_source']} are the perfect generator and, transformed, "
                "the broken ones. Each cell: the verdict (95% bootstrap, PASS = the space sees "
                "what it must) and the effect (KID above the perfect set's; for the memorizer, "
                "nearest-training similarity above the perfect set's; for class collapse, the "
                "extra share of samples nearest to that class). A space 'ranks models "
                f"correctly' only as far as it passes these: {passed}.")),
            ("table", (["Probe", "A sound space shows", *spaces], rows))]


def _memorization_baseline(results):
    """The held-out real slices' near-copy share against the training split, or None."""
    for entry in results["models"].values():
        for variant in entry["variants"].values():
            share = (variant.get("metrics") or {}).get("memorization_share_real")
            if share is not None:
                return share
    return None


def _judge(classifier):
    """'a CNN classifier' or 'an ensemble of 3 CNN classifiers, 4000 steps each'."""
    members, steps = classifier.get("members") or 1, classifier.get("steps")
    each = f", {steps} optimizer steps{' each' if members > 1 else ''}," if steps else ""
    if members > 1:
        return f"an ensemble of {members} CNN classifiers (mean probability){each}"
    return f"a CNN classifier{each}"


def _class_table(results):
    """Per-class fidelity of every conditional variant, with the real held-out reference."""
    rows = []
    for entry in results["models"].values():
        for variant in entry["variants"].values():
            metrics = variant.get("metrics") or {}
            if not variant.get("conditional") or metrics.get("class_fidelity") is None:
                continue
            per_class = metrics.get("class_fidelity_per_class") or {}
            rows.append([variant["label"]]
                        + [_fmt(per_class.get(name), "{:.0%}") for name in CLASS_NAMES]
                        + [_fmt(metrics["class_fidelity"], "{:.0%}"),
                           _fmt(metrics.get("tstr_accuracy"), "{:.0%}")])
    classifier = results.get("classifier")
    if rows and classifier:
        per_class = classifier.get("test_accuracy_per_class") or {}
        tstr = (results.get("real_metrics") or {}).get("tstr_accuracy")
        rows.append(["Real held-out slices (reference)"]
                    + [_fmt(per_class.get(name), "{:.0%}") for name in CLASS_NAMES]
                    + [_fmt(classifier["test_accuracy"], "{:.0%}"), _fmt(tstr, "{:.0%}")])
    return ["Samples", *CLASS_NAMES, "Overall", "TSTR accuracy"], rows


def _interval_text(claim):
    if claim.get("interval") is None:
        return "-"
    low, high = claim["interval"]
    return f"{claim['effect']:.3g} [{low:.3g}, {high:.3g}]"


def conclusion(results):
    """One paragraph: what was compared, on which data and size, and what the evidence says."""
    config, data = results["config"], results["data"]
    claims = results.get("claims") or []
    counts = {v: sum(c["verdict"] == v for c in claims)
              for v in ("PASS", "FAIL", "INCONCLUSIVE", "N/A")}
    names = ", ".join(results["models"]) or "no models"
    failed = [c["claim"] for c in claims if c["verdict"] == "FAIL"]
    open_ = [c["claim"] for c in claims if c["verdict"] == "INCONCLUSIVE"]
    text = (f"**Conclusion.** Compared {names} on {data['n_images']} "
            f"{'synthetic phantom' if data['source'] == 'phantom' else 'user-supplied'} slices "
            f"at {config['image_size']} px ({config['n_generate']} samples per model against "
            f"{data['n_test']} held-out slices). Of {len(claims)} claims, {counts['PASS']} "
            f"passed, {counts['FAIL']} failed and {counts['INCONCLUSIVE']} were inconclusive at "
            "this sample size (table below, with each effect's 95% interval). ")
    if failed:
        text += "Failed: " + " ".join(failed) + " "
    if open_:
        text += "Not decided by these images: " + " ".join(open_)
    return text


def _intro_blocks(results):
    """Title, the synthetic-data warning, the conclusion, and what was run on which data."""
    config, data = results["config"], results["data"]
    blocks = [("h1", f"lungkit comparison report: {config['name']}")]
    if data["source"] == "phantom":
        blocks.append(("p", (
            "**Synthetic data.** These images are lungkit's phantom chest-CT slices, not "
            "patients: the figures test the pipeline and the models' behaviour, not clinical "
            "realism. Run `lungkit compare --data DIR` on IQ-OTH/NCCD for the paper's data.")))
    blocks.append(("p", conclusion(results)))
    blocks.append(("p", (
        f"Generated {datetime.datetime.now():%Y-%m-%d %H:%M} in {results['wall_seconds']:.0f} s. "
        f"Data: {data['source']} ({data['data_dir']}), {data['n_images']} slices "
        f"(Normal / Benign / Malignant = {' / '.join(map(str, data['class_counts']))}), "
        f"{config['image_size']}x{config['image_size']} px, {config['channels']} channel(s); "
        f"{data['n_train']} for training, {data['n_test']} held out.")))
    blocks.append(("p", (
        f"{config['n_generate']} generated images per model are scored against the "
        f"{data['n_test']} held-out real slices; the reference row scores as many real training "
        "slices the same way. Memorization compares each sample with its nearest training "
        "image. The split is by file: IQ-OTH/NCCD files carry no patient id, so slices of one "
        "patient can fall on both sides, which flatters FID and memorization figures. The "
        f"domain encoder is trained on its own {data.get('n_encoder', 0)} slices, which no "
        "generator and no metric sees.")))
    return blocks


def _claim_blocks(results):
    """The claims table, each claim with its verdict, effect, interval and margin."""
    if not results.get("claims"):
        return []
    return [
        ("h2", "The paper's claims, checked"),
        ("p", ("Each claim is a test: the effect is measured on these images and given a 95% "
               "bootstrap interval (images resampled with replacement; class fidelity: the "
               "exact binomial interval). PASS: the whole interval is beyond the claim's "
               "margin; FAIL: the whole interval falls short of it; INCONCLUSIVE: these images "
               "cannot decide.")),
        ("table", (["Claim", "Verdict", "Effect [95% interval]", "Margin", "Measured"],
                   [[c["claim"], c["verdict"], _interval_text(c),
                     _fmt(c.get("margin"), "{:.3g}"), c["evidence"]]
                    for c in results["claims"]])),
    ]


def _result_blocks(results):
    """The results table, one table per feature space, the probes and the near-copy baseline."""
    blocks = [("h2", "Results"), ("table", _results_table(results))]
    blocks += _feature_blocks(results)
    blocks += _probe_blocks(results)
    baseline = _memorization_baseline(results)
    if baseline is not None:
        blocks.append(("p", (
            f"Near-copies: samples whose nearest training slice correlates >= 0.95 (32 px "
            f"thumbnails). Held-out real slices score {baseline:.0%} against the same training "
            "slices: a model at or below that share copies no more than real data resembles "
            "itself; blurry samples, close to the average slice, score high too.")))
    return blocks


def _class_blocks(results):
    """Class fidelity and TSTR per conditional model; nothing for unconditional runs."""
    header, rows = _class_table(results)
    if not rows:
        return []
    classifier = results.get("classifier") or {}
    return [
        ("h2", "Class-conditional generation"),
        ("p", (f"Class fidelity: the share of samples that {_judge(classifier)} trained on the "
               f"real training split (**{classifier.get('name', 'domain encoder')}**) assigns "
               "to the class they were generated for (chance: 33%); the reference row is the "
               "same judge on the held-out real slices, the most a model can score. The claim "
               "needs each model's exact binomial interval above chance. TSTR: a classifier "
               "trained only on a model's samples, tested on the held-out real slices "
               "(reference: trained on as many real training slices).")),
        ("table", (header, rows)),
    ]


def build_blocks(results, figures):
    """The report as blocks: ("h1"|"h2"|"p"|"table"|"figure", payload), rendered by `render`."""
    return (_intro_blocks(results) + _claim_blocks(results) + _result_blocks(results)
            + _class_blocks(results) + [("h2", "Figures")]
            + [("figure", (path, caption)) for path, caption in figures])


def write_report(results, samples, real, out_dir):
    """Draws the figures and writes `report.md` and `report.html` into `out_dir`.

    Args:
        results: the results dict of `lungkit.experiment.compare`.
        samples: `{variant: float32 images (N, H, W, C) in [0, 1]}`.
        real: `(images, labels)` of real training images for Figure 1.
        out_dir: the run folder; figures go to `out_dir/figures`.

    Returns:
        The path of report.html.
    """
    out_dir = Path(out_dir)
    figures = draw_figures(results, samples, real, out_dir / "figures")
    blocks = build_blocks(results, figures)
    write_text(out_dir / "report.md", render_markdown(blocks, out_dir))  # atomic: lungkit.files
    write_text(out_dir / "report.html", render_html(blocks))
    logger.info("Wrote %s and %s", out_dir / "report.md", out_dir / "report.html")
    return out_dir / "report.html"
