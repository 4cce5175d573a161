#!/bin/sh
# Run a pipeline entry with the project's Python environment: the stage commands in dvc.yaml
# call `sh pipelines/run.sh pipelines/<stage>.py ARGS`, so `dvc repro` and `dvc exp run` work
# as DVC users type them (`.venv/bin/dvc exp run ...`, no activated venv, `.venv/bin` not on
# PATH), also under `--temp`/`--queue`, which run stages in <root>/.dvc/tmp/exps/<random>/.
#
# The interpreter: $VIGIL_PYTHON if set, else <project root>/.venv/bin/python (created by
# `make venv`), else the `python` (or `python3`) on PATH when it can import vigil and torch.
# Without one, the stage stops at once with one line saying what to do.
#
# The stage imports the code of the folder it runs in (src/ first on PYTHONPATH), the code DVC
# hashed as its deps, not a copy installed elsewhere.

here=$(pwd -P)
root=${here%%/.dvc/tmp/exps/*}

has_vigil() {
    "$1" -c 'import importlib.util as u, sys; sys.exit(not (u.find_spec("torch") and u.find_spec("vigil")))' \
        >/dev/null 2>&1
}

PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH

python=""
if [ -n "${VIGIL_PYTHON:-}" ]; then
    python=$VIGIL_PYTHON
elif [ -x "$root/.venv/bin/python" ]; then
    python=$root/.venv/bin/python
else
    for candidate in python python3; do
        if command -v "$candidate" >/dev/null 2>&1 && has_vigil "$candidate"; then
            python=$candidate
            break
        fi
    done
fi
if [ -z "$python" ]; then
    echo "vigil: no Python environment for this stage ($root/.venv is missing and the python on PATH cannot import vigil and torch): run \`make venv\` in $root" >&2
    exit 1
fi
if ! has_vigil "$python"; then
    echo "vigil: $python cannot import vigil and torch (environment missing or incomplete): run \`make venv\` in $root" >&2
    exit 1
fi

exec "$python" "$@"
