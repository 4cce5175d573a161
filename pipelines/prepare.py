"""DVC stage `prepare@<dataset>`: source folder -> data/prepared/<dataset>/ (arrays + manifest).

    python pipelines/prepare.py --dataset capsules [--params params.yaml] [--out DIR]

DIR defaults to data/prepared/<dataset>.

Relative `source` / `labels_csv` paths in the params file are taken from the params file's folder.
Exit status 2 with a one-paragraph message (naming the file or key) for bad input or params,
unreadable source or unwritable output. Unsupported files in the source are skipped with a
warning and listed in the manifest (`ignored_files`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vigil.config import ConfigError, load_params
from vigil.data.prepare import PrepareError, prepare_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", required=True, help="a key of data.datasets in the params file"
    )
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--out", type=Path, help="output folder (default data/prepared/<dataset>)")
    parser.add_argument(
        "--workers", type=int, default=None, help="decode threads (default: min(4, CPUs))"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = load_params(args.params)
        spec = params.dataset(args.dataset)
        out = args.out or Path("data/prepared") / args.dataset
        result = prepare_dataset(
            args.dataset,
            spec,
            params.for_dataset(args.dataset).prepare,
            out,
            base_dir=args.params.resolve().parent,
            workers=args.workers,
            progress=not args.no_progress,
            extra_dir=args.params.resolve().parent / params.data.extra_dir / args.dataset,
        )
    except (ConfigError, PrepareError, OSError) as error:
        # every data problem is one message naming the file or key, never a traceback;
        # OSError: an unreadable source folder or an unwritable output folder
        print(f"prepare: error: {error}", file=sys.stderr)
        return 2
    splits = ", ".join(f"{s}={result.counts[s]['items']}" for s in ("train", "val", "tune", "test"))
    print(
        f"prepared {args.dataset}: {result.n_items} items ({splits}), {result.n_bad} bad files, "
        f"{result.seconds:.1f} s -> {result.root}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
