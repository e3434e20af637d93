#!/usr/bin/env bash
# One-shot setup: system libraries for off-screen rendering, a virtual environment in .venv,
# torch first (so nothing pulls a different build), then the project and the two packages that
# must be installed without their dependencies. Safe to run again.
#
#   bash tools/setup.sh              # CPU machine (installs torch 2.13.0 CPU if no torch is present)
#   VENV=/path/to/env bash tools/setup.sh
#   TORCH_SPEC="torch==2.13.0" bash tools/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

# 1. OSMesa/EGL for pyrender (only when missing, and only as root or with sudo).
need_apt=0
for lib in libOSMesa.so.8 libEGL.so.1; do
  ldconfig -p 2>/dev/null | grep -q "$lib" || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "[setup] installing OSMesa/EGL system libraries"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libosmesa6 libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null
fi

# 2. Virtual environment.
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true

# 3. torch first: any later 'torch' requirement is then already satisfied.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC"
  $PIP install -q "$TORCH_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
fi
TORCH_VERSION="$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')"

# 4. The project (editable) with its test extras.
echo "[setup] installing crocoman"
$PIP install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true

# 5. Packages whose declared dependencies would break things (docs/dependencies.md):
#    pyrender pins PyOpenGL 3.1.0 (breaks OSMesa); timm pulls torchvision, which pins torch.
$PIP install -q --no-deps "pyrender==0.1.45" "timm==1.0.31" 2>&1 | grep -v "^WARNING: Location" || true
if ! "$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('torchvision') is None)"; then
  case "$TORCH_VERSION" in
    2.13.*) TV="torchvision==0.28.0" ;;
    2.12.*) TV="torchvision==0.27.1" ;;
    2.11.*) TV="torchvision==0.26.0" ;;
    *) TV="" ;;
  esac
  if [ -n "$TV" ]; then
    $PIP install -q --no-deps "$TV" 2>&1 | grep -v "^WARNING: Location" || true
  else
    echo "[setup] no torchvision known for torch $TORCH_VERSION: install the matching one for timm exports"
  fi
fi

# 6. Check nothing replaced torch.
AFTER="$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')"
if [ "$AFTER" != "$TORCH_VERSION" ]; then
  echo "[setup] ERROR: torch changed from $TORCH_VERSION to $AFTER during the install" >&2
  exit 1
fi

# 7. Plain 'import torchvision' / 'import timm' in the venv: the registry's torchvision is a CUDA
#    build whose ops cannot load next to a CPU torch. A one-line .pth in site-packages installs a lazy
#    hook (_crocoman_torchvision.py) that defines the missing op schemas the first time torchvision is
#    imported, and does nothing where torchvision's own extension loads (docs/trainer.md).
"$VENV/bin/python" -c 'import sysconfig, _crocoman_torchvision as h; h.write_pth(sysconfig.get_paths()["purelib"])'
if "$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('torchvision') is None)"; then
  if ! "$VENV/bin/python" -c "import timm, torchvision" >/dev/null; then
    echo "[setup] ERROR: 'import timm, torchvision' fails in $VENV (see above)" >&2
    exit 1
  fi
fi
echo "[setup] ready: $VENV (torch $AFTER). Try: $VENV/bin/pairgen --help"
