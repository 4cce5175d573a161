"""DVC stage `generate`: write the built-in synthetic datasets into data/raw/{capsules,print}.

Usage: python pipelines/generate.py [--params params.yaml] [--out data/raw]
Reads only the `generate` section of the params file. Each dataset folder is built in a temp
sibling and renamed over the old one, so a failed run leaves the previous data intact.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vigil.config import ConfigError, load_params
from vigil.data.synthetic import generate_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("data/raw"))
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    counts = generate_all(args.out, params.generate)
    elapsed = time.perf_counter() - start
    for name, summary in counts.items():
        details = ", ".join(f"{key}={value}" for key, value in summary.items())
        print(f"generate: {args.out / name}: {details}")
    print(f"generate: done in {elapsed:.1f} s (seed {params.generate.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
