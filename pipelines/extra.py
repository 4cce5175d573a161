"""DVC stage `extra@<dataset>`: fingerprint data/extra/<dataset>/ for `prepare@<dataset>`.

    python pipelines/extra.py --dataset capsules [--params params.yaml] [--out FILE]

FILE defaults to data/fingerprints/extra-<dataset>.json: the dataset, its folder of ingested
normal data (`data.extra_dir`/<dataset>), the number of files and their content hash (see
vigil.data.fingerprint); no timestamps, so the same data writes the same bytes and DVC skips
`prepare@<dataset>`. This stage depends on all of `data.extra_dir` (which always exists, unlike a
new dataset's folder), so an ingest into one dataset reruns every `extra@*`, and only the
fingerprint of that dataset changes. Exit status 2 with one line for bad params or an unreadable
folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vigil.atomic import atomic_write_json
from vigil.config import ConfigError, load_params
from vigil.data.fingerprint import fingerprint_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", required=True, help="a key of data.datasets in the params file"
    )
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--out", type=Path, help="default data/fingerprints/extra-<dataset>.json")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        params.dataset(args.dataset)  # an unknown dataset is an error naming the known ones
        folder = Path(params.data.extra_dir) / args.dataset
        found = fingerprint_folder(args.params.resolve().parent / folder)
    except (ConfigError, OSError) as error:
        print(f"extra: error: {error}", file=sys.stderr)
        return 2
    out = args.out or Path("data/fingerprints") / f"extra-{args.dataset}.json"
    record = {
        "dataset": args.dataset,
        "folder": folder.as_posix(),
        "files": found.files,
        "sha256": found.sha256,
    }
    atomic_write_json(out, record)
    print(f"extra {args.dataset}: {folder.as_posix()}: {found.files} file(s) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
