#!/usr/bin/env bash
# Set up everything Mask2Former needs in ./.venv, from the package registries only.
# Idempotent: a second run checks a stamp and returns in seconds.
# Variables: PYTHON (interpreter to build the venv from, default python3.11), VENV (default .venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"

D2_SDIST_VERSION="0.6"
D2_SDIST_SHA256="5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
PANOPTICAPI_VERSION="0.2.0"
GRADIO_VERSION="6.31.0"
OPS_DIR="mask2former/modeling/pixel_decoder/ops"

log() { echo "[setup] $*"; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }
# The machine's pip configuration lists local mirror folders that may not exist; their warnings are noise.
pip_quiet() { "$VENV/bin/python" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; return "${PIPESTATUS[0]}"; }

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found. Mask2Former is set up and tested with Python 3.11; install it (e.g. apt-get install python3.11 python3.11-venv) or point PYTHON at a 3.11 interpreter."
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$PY_VERSION" = "3.11" ] || die "$PYTHON is Python $PY_VERSION; the pinned torch/detectron2 stack needs Python 3.11. Set PYTHON=python3.11."

# The browser test of demo/app.py drives Debian's chromium (Playwright's own browser download
# cannot work without internet). Checked before the stamp: the venv may be current without it.
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        log "installing Debian's chromium for the browser test (apt-get)"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } > /tmp/mask2former_chromium_install.log 2>&1; then
            echo "[setup] WARNING: apt-get could not install chromium (log: /tmp/mask2former_chromium_install.log);" \
                 "tests/test_app.py's browser test will be skipped." >&2
        fi
    else
        echo "[setup] WARNING: /usr/bin/chromium is missing and installing it needs root (apt-get install chromium);" \
             "tests/test_app.py's browser test will be skipped." >&2
    fi
fi

stamp_inputs() {
    cat requirements.txt scripts/setup.sh
    if [ -d "$OPS_DIR" ]; then find "$OPS_DIR" -type f \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' -o -name 'setup.py' -o -name 'make.sh' \) | sort | xargs cat; fi
}
STAMP_FILE="$VENV/.mask2former-setup-stamp"
STAMP="$(stamp_inputs | sha256sum | cut -d' ' -f1)"
COMPAT="$ROOT/mask2former/utils/detectron2_compat.py"
# The start-up hook that lets detectron2 be imported before mask2former names this checkout's path.
hook_in_place() { grep -qsF "$COMPAT" "$VENV"/lib/python3.*/site-packages/mask2former_detectron2_compat.pth; }
if [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$STAMP" ] && hook_in_place \
    && "$VENV/bin/python" -c "import torch, torchvision, detectron2, panopticapi" >/dev/null 2>&1; then
    log "environment up to date ($VENV)"
    exit 0
fi

START=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-60}" PIP_RETRIES="${PIP_RETRIES:-2}"

log "installing pinned requirements (requirements.txt)"
pip_quiet install -q -r requirements.txt || die "pip could not install requirements.txt (see the messages above)."

# panopticapi-lite declares numpy<2 but works with NumPy 2; install it without letting pip downgrade NumPy.
if ! "$VENV/bin/python" -c "import panopticapi.evaluation" >/dev/null 2>&1; then
    log "installing panopticapi (panopticapi-lite==$PANOPTICAPI_VERSION)"
    pip_quiet install -q --no-deps "panopticapi-lite==$PANOPTICAPI_VERSION" || die "could not install panopticapi-lite."
fi

# gradio declares pillow<13; with the pinned pillow 13 it works (tests/test_app.py), so it is
# installed without its declared dependencies, which requirements.txt lists.
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('gradio') != '$GRADIO_VERSION')" >/dev/null 2>&1; then
    log "installing gradio==$GRADIO_VERSION (without its pillow<13 pin)"
    pip_quiet install -q --no-deps "gradio==$GRADIO_VERSION" || die "could not install gradio==$GRADIO_VERSION."
fi

if "$VENV/bin/python" -c "import detectron2" >/dev/null 2>&1; then
    log "using the installed detectron2: $("$VENV/bin/python" -c 'import detectron2, os; print(detectron2.__version__, os.path.dirname(detectron2.__file__))')"
else
    log "installing detectron2 v$D2_SDIST_VERSION Python code (pb1-detectron2 sdist, without compiled ops)"
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
    pip_quiet download -q --no-deps --no-build-isolation --no-binary :all: "pb1-detectron2==$D2_SDIST_VERSION" -d "$WORK" \
        || die "could not download pb1-detectron2==$D2_SDIST_VERSION from the package index."
    SDIST="$WORK/pb1-detectron2-$D2_SDIST_VERSION.tar.gz"
    [ -f "$SDIST" ] || die "expected $SDIST after download; found: $(ls "$WORK")"
    echo "$D2_SDIST_SHA256  $SDIST" | sha256sum -c --status \
        || die "sha256 of $SDIST does not match the pinned $D2_SDIST_SHA256; refusing to install it."
    tar -xzf "$SDIST" -C "$WORK"
    SRC="$WORK/pb1-detectron2-$D2_SDIST_VERSION"
    grep -q "ext_modules=get_extensions()," "$SRC/setup.py" || die "unexpected setup.py in $SDIST (no ext_modules line to disable)."
    sed -i 's/ext_modules=get_extensions(),/ext_modules=[],/' "$SRC/setup.py"
    pip_quiet install -q --no-build-isolation --no-deps "$SRC" || die "pip could not install detectron2 from $SRC."
fi

if [ -f "$OPS_DIR/make.sh" ]; then
    log "building the multi-scale deformable attention kernels ($OPS_DIR)"
    if ! (cd "$OPS_DIR" && PATH="$VENV/bin:$PATH" sh make.sh) > "$VENV/ms_deform_attn_build.log" 2>&1; then
        echo "[setup] WARNING: building the deformable attention op failed (log: $VENV/ms_deform_attn_build.log);" \
             "Mask2Former still works through its slower pure-PyTorch path." >&2
    fi
fi

log "installing the start-up hook that lets detectron2 be imported before mask2former"
"$VENV/bin/python" - "$COMPAT" <<'PY' || die "could not install the detectron2 start-up hook."
import importlib.util, sys, sysconfig
spec = importlib.util.spec_from_file_location("detectron2_compat", sys.argv[1])
compat = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compat)
compat.install_startup_hook(sysconfig.get_paths()["purelib"])
PY

"$VENV/bin/python" -c "import mask2former" || die "the environment is installed but 'import mask2former' fails (see above)."
echo "$STAMP" > "$STAMP_FILE"
log "done in $(( $(date +%s) - START )) s ($VENV)"
