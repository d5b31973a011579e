#!/usr/bin/env bash
# Creates (or updates) the project's virtualenv with torch, detectron2, the test tools and the
# plugin itself (editable). Safe to run again: a quick no-op when none of its inputs changed.
#
# A venv counts as good only once every step has passed and the stamp file is written; a run that
# finds a venv without a stamp (an earlier run failed or was killed) deletes it and starts over.
#
# detectron2 is resolved in this order, and the route taken is printed:
#   1. already importable in the venv;
#   2. official source at the pinned commit (requirements/detectron2.txt; needs GitHub);
#   3. the PyPI snapshot `sal-detectron2` (upstream detectron2 376c9306, cp310 wheel whose Python
#      code runs on 3.11; its compiled _C is not loaded and the plugin needs none of it).
#
# Environment: VENV (default ./.venv), PYTHON (default python3.11, else python3).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$(realpath -m "${VENV:-$ROOT/.venv}")  # absolute: it is written into a .pth file
REQ=$ROOT/requirements
STAMP=$VENV/.bootstrap-ok
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}

step="start"
on_error() {
    rm -f "$STAMP"
    echo "bootstrap: FAILED at step '$step'. The venv at $VENV is marked incomplete and will be" \
         "rebuilt on the next run. Fix the error above and run again." >&2
}
trap on_error ERR

inputs_hash() {
    # Everything that decides what gets installed.
    { "$PYTHON" --version; cat "$REQ"/*.txt "$ROOT/setup.py" "${BASH_SOURCE[0]}"; } | sha256sum | cut -d' ' -f1
}

HASH=$(inputs_hash)
if [[ -f $STAMP && $(cat "$STAMP") == "$HASH" ]]; then
    echo "bootstrap: environment at $VENV is up to date"
    exit 0
fi

if [[ -d $VENV && ! -f $STAMP ]]; then
    echo "bootstrap: $VENV has no completion stamp (an earlier run stopped half-way); rebuilding it"
    rm -rf "$VENV"
fi
rm -f "$STAMP"

step="create venv"
if [[ ! -x $VENV/bin/python ]]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -c "$REQ/constraints.txt")

step="build tools"
"${PIP[@]}" -q "pip>=23" wheel setuptools

step="torch"
echo "bootstrap: installing torch and torchvision (pinned in requirements/constraints.txt)"
"${PIP[@]}" -q torch torchvision

step="detectron2"
install_detectron2() {
    if "$VENV/bin/python" -c "import detectron2" 2>/dev/null; then
        echo "bootstrap: detectron2 route: already importable"
        return
    fi
    echo "bootstrap: detectron2: trying the official source at the pinned commit"
    if "${PIP[@]}" -q --no-build-isolation -r "$REQ/detectron2.txt"; then
        echo "bootstrap: detectron2 route: official source (requirements/detectron2.txt)"
        return
    fi
    echo "bootstrap: official source unavailable; using the PyPI snapshot sal-detectron2"
    "${PIP[@]}" -q -r "$REQ/detectron2-runtime.txt"
    local target=$VENV/detectron2-snapshot
    rm -rf "$target"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -c "$REQ/constraints.txt" \
        --no-deps --only-binary=:all: --python-version 3.10 --target "$target" sal-detectron2
    local site
    site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "$target" >"$site/detectron2-snapshot.pth"
    echo "bootstrap: detectron2 route: PyPI snapshot (sal-detectron2, --target $target)"
}
install_detectron2

step="test tools"
"${PIP[@]}" -q -r "$REQ/dev.txt"

step="plugin (editable)"
"${PIP[@]}" -q --no-build-isolation -e "$ROOT"

step="verify imports"
"$VENV/bin/python" - <<'PY'
import detectron2, torch, panoptic_fpn_ext  # noqa: F401
from detectron2.modeling import META_ARCH_REGISTRY
print(f"bootstrap: ok: torch {torch.__version__}, detectron2 {detectron2.__version__} "
      f"from {detectron2.__file__}")
PY

echo "$HASH" >"$STAMP"
echo "bootstrap: environment ready at $VENV"
