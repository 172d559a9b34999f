"""Writes jaxdl's `digits` and `shapes` as folders in the layouts a user brings, to try the disk path offline.

    python experiments/export_example_folders.py --out=example_data [--size=tiny|small|full] [--only=shapes_yolo]

Writes `OUT/digits` (image_folder), `OUT/shapes_classes` (image_folder),
`OUT/shapes_yolo` (yolo, with data.yaml) and `OUT/shapes_masks` (mask_folder);
see jaxdl.data.example_folders for what each holds. One line per layout, then
the command that checks each. An existing folder is kept unless --overwrite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxdl.data import example_folders  # noqa: E402
from jaxdl.errors import UserError  # noqa: E402


def main(argv=None) -> int:
    """Writes the folders; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write the datasets in")
    parser.add_argument(
        "--size",
        default="small",
        choices=list(example_folders.SIZES),
        help="split sizes (train, val, test): "
        + ", ".join(f"{k} {v}" for k, v in example_folders.SIZES.items())
        + " (digits: all 1,797 at full)",
    )
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(example_folders.LAYOUTS)}")
    parser.add_argument("--overwrite", action="store_true", help="replace folders that exist")
    args = parser.parse_args(argv)
    only = [name for name in args.only.split(",") if name] or None

    def report(name, format, folder, seconds):
        splits = folder / "images" if format == "yolo" else folder
        counts = {
            name: sum(1 for _ in (splits / name).rglob("*.png"))
            for name in example_folders.FOLDER.values()
            if (splits / name).is_dir()
        }
        split_counts = ", ".join(f"{k} {v}" for k, v in counts.items())
        if format == "mask_folder":
            split_counts = ", ".join(f"{k} {v // 2}" for k, v in counts.items())  # An image and a mask each.
        print(f"{name:15s} {format:13s} {split_counts:32s} -> {folder} ({seconds:.1f} s)", flush=True)

    try:
        written = example_folders.write_all(args.out, args.size, only=only, overwrite=args.overwrite, report=report)
    except UserError as error:
        print(f"export_example_folders: error: {error}", file=sys.stderr)
        return 1
    print("check them with:")
    for name, folder in written.items():
        format = example_folders.LAYOUTS[name][0]
        target = folder / "data.yaml" if format == "yolo" else folder
        print(f"  jaxdl-data check {target} --format={format}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
