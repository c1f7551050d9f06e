"""`lungkit data phantom|fetch|info`: make, download or inspect a dataset."""

import logging

from lungkit.cli.options import int_at_least

logger = logging.getLogger("lungkit")


def add_data_commands(subparsers):
    """`lungkit data phantom|fetch|info`."""
    parser = subparsers.add_parser(
        "data", help="make, download or inspect a dataset",
        description="Make the synthetic phantom CT dataset, download IQ-OTH/NCCD (or any zip "
        "in the same layout), or summarise a dataset folder.")
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)
    commands = parser.add_subparsers(title="data commands", metavar="COMMAND")

    phantom = commands.add_parser(
        "phantom", help="write synthetic chest-CT slices in the IQ-OTH/NCCD layout",
        description="Write deterministic synthetic axial chest-CT slices (Normal, Benign, "
        "Malignant) as JPG files in the IQ-OTH/NCCD folder layout; load them with "
        "`lungkit.load_data(OUT)`.")
    phantom.add_argument("--out", required=True, help="dataset folder to create, e.g. data/phantom")
    phantom.add_argument("--per-class", type=int_at_least(1), default=40,
                         help="slices per class (default 40)")
    phantom.add_argument("--size", type=int_at_least(32), default=512,
                         help="slice side in pixels (default 512)")
    phantom.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default 0); the same "
                         "seed gives byte-identical files")
    phantom.set_defaults(handler=_data_phantom)

    fetch = commands.add_parser(
        "fetch", help="download and extract a dataset (Drive, Kaggle, URL or local zip)",
        description="Download and safely extract a dataset once; a second run is a no-op. "
        "SOURCE is a Google Drive file id or share link, kaggle:OWNER/DATASET (e.g. "
        "kaggle:hamdallak/the-iqothnccd-lung-cancer-dataset), an http(s) URL of a zip, or a "
        "local .zip file.")
    fetch.add_argument("source", metavar="SOURCE", help="Drive id/link, kaggle:owner/name, URL or .zip")
    fetch.add_argument("--out", required=True, help="folder to extract into, e.g. data/iqothnccd")
    fetch.add_argument("--sha256", default=None, metavar="HEX",
                       help="expected SHA-256 of the archive; a mismatch stops before extraction")
    fetch.set_defaults(handler=_data_fetch)

    info = commands.add_parser(
        "info", help="summarise a dataset folder: class counts, sizes, unreadable files",
        description="Print class counts, the image size and mode histograms, unreadable or "
        "ignored files, and which IQ-OTH/NCCD copy the folder matches (1190 slices = "
        "original release, 1097 = the copy most papers use).")
    info.add_argument("data_dir", metavar="DIR", help="dataset folder (as passed to load_data)")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(handler=_data_info)


def _data_phantom(args):
    from lungkit.data.phantom import make_phantom_dataset

    root = make_phantom_dataset(args.out, per_class=args.per_class, size=args.size,
                                seed=args.seed, progress=True)
    print(root)


def _data_fetch(args):
    from lungkit.data.fetch import fetch_dataset

    try:
        print(fetch_dataset(args.source, args.out, sha256=args.sha256))
    except (ConnectionError, RuntimeError) as error:
        logger.error("%s", error)
        return 1


def _data_info(args):
    import json

    from lungkit.data.images import dataset_info

    info = dataset_info(args.data_dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    lines = [f"Dataset: {info['root']}",
             f"Copy:    {info['copy']}",
             f"Images:  {info['total']} readable of {info['files']} image files"]
    lines += [f"  {name:<10} {count:>6}" for name, count in info["counts"].items()]
    lines.append("Sizes (WxH): " + ", ".join(f"{k}: {v}" for k, v in info["sizes"].items()))
    lines.append("Modes:       " + ", ".join(f"{k}: {v}" for k, v in info["modes"].items()))
    lines.append("Extensions:  " + ", ".join(f"{k}: {v}" for k, v in info["extensions"].items()))
    lines.append(f"Unreadable:  {len(info['unreadable'])}")
    lines += [f"  {path}: {reason}" for path, reason in info["unreadable"]]
    if info["ignored"]:
        lines.append(f"Ignored (not images): {len(info['ignored'])}")
        lines += [f"  {path}" for path in info["ignored"]]
    print("\n".join(lines))


