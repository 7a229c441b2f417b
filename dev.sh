#!/usr/bin/env bash
# Fresh-machine entry points: each command does its own set-up, then runs.
#
#   ./dev.sh quickstart [ARGS...]   create .venv when missing, install, run `fclm quickstart ARGS`
#   ./dev.sh test [PYTEST ARGS...]  create .venv when missing, install, run the test suite
#   ./dev.sh setup                  only the set-up
#
# Environment:
#   TORCH_INDEX    pip index for torch. Unset: your pip's default index (PyPI's Linux wheel is the
#                  CUDA build, ~GBs). CPU-only machine: https://download.pytorch.org/whl/cpu;
#                  a given CUDA: https://download.pytorch.org/whl/cu126 (etc.).
#   TORCH_VERSION  default 2.13.0;   PYTHON  default python3;   VENV  default .venv
# An existing torch in the venv is kept. The exit status is the command's own (pytest's codes).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PY="$VENV/bin/python"

setup() {
    if [ ! -x "$PY" ]; then
        echo "dev.sh: creating $VENV" >&2
        "$PYTHON" -m venv "$VENV"
        "$PY" -m pip install -q --upgrade pip </dev/null
    fi
    if ! "$PY" -c "import torch" 2>/dev/null; then
        echo "dev.sh: installing torch==$TORCH_VERSION${TORCH_INDEX:+ from $TORCH_INDEX}" >&2
        "$PY" -m pip install -q "torch==$TORCH_VERSION" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} </dev/null
    fi
    local stamp="$VENV/.fclm-installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! "$PY" -c "import fclm_cli" 2>/dev/null; then
        echo "dev.sh: installing fclm[dev] (editable)" >&2
        "$PY" -m pip install -q -e ".[dev]" </dev/null
        touch "$stamp"
    fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    setup)
        setup ;;
    quickstart)
        setup
        exec "$VENV/bin/fclm" quickstart "$@" ;;
    test)
        setup
        java -version >/dev/null 2>&1 || echo "dev.sh: java not found: the METEOR tests will fail" >&2
        exec "$PY" -m pytest -n 2 -q "$@" ;;
    *)
        echo "usage: ./dev.sh quickstart|test|setup [ARGS...]" >&2
        exit 2 ;;
esac
