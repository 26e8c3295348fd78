#!/usr/bin/env bash
# The GPU figures in one call on a lent device machine (README: "GPU figures").
#
#   bash scripts/gpu_bench.sh wheels   # here, where PyPI is reachable: wheels of what the device image lacks -> .whl/
#   bash scripts/gpu_bench.sh          # on the device (carry .whl): versions, installs, then the suite in the time left
#
# The device machine's image has python3 with a CUDA torch, transformers, accelerate, safetensors,
# onnxruntime (CPU), opencv and scikit-image, but no diffusers, insightface, cachetools or open-clip-torch
# (the CLIP vocabulary), and nothing can be fetched there: they travel as wheels in .whl/. Where pip can
# reach an index, whatever is still missing is installed from requirements.txt's pins instead
# (torch==2.13.0 from PyPI is the CUDA build on Linux with an NVIDIA GPU).
#
# Environment: PYTHON (default python3), OUT (default /tmp/likeness-gpu; the device tool sets it),
# GPU_BENCH_TOTAL_S (the whole call's limit, default 570), GPU_BENCH_BUDGET_S (the suite's largest
# budget, default 420), GPU_BENCH_EXTRA (more flags for the bench, e.g. --dry-run to try this script
# on a machine without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
WHEELS=(diffusers==0.42.1 cachetools==8.0.0 insightface==2.1 open-clip-torch==3.3.0 transformers==5.23.0 tokenizers==0.23.3)

if [[ "${1:-}" == "wheels" ]]; then
    mkdir -p .whl
    exclude=$(git rev-parse --git-path info/exclude 2>/dev/null) && mkdir -p "$(dirname "$exclude")" \
        && { grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"; }
    "${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}" || exit 1
    du -sh .whl
    exit 0
fi

start=$(date +%s)
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-/tmp/likeness-gpu}
WORK=${TMPDIR:-/tmp}/likeness-gpu-work
mkdir -p "$OUT_DIR" "$WORK"
TOTAL_S=${GPU_BENCH_TOTAL_S:-570}
BUDGET_MAX=${GPU_BENCH_BUDGET_S:-420}

echo "== machine"
date -u +"%Y-%m-%dT%H:%M:%SZ"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    nvidia-smi | grep -m1 "CUDA Version" | sed 's/  */ /g'
else
    echo "nvidia-smi: not found (no NVIDIA driver on this machine)"
fi

if compgen -G ".whl/*.whl" >/dev/null; then
    echo "== installing the carried wheels: $(ls .whl | tr '\n' ' ')"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    # transformers/tokenizers travel to match requirements.txt; if they do not import beside the image's
    # other packages (a dependency too old there), the image's own versions are used instead.
    if ! "$PY" -c "import transformers, diffusers" 2>/tmp/site-import.err; then
        echo "   the carried transformers does not import here ($(tail -1 /tmp/site-import.err)); using the image's"
        rm -rf /tmp/site/transformers /tmp/site/transformers-* /tmp/site/tokenizers /tmp/site/tokenizers-*
    fi
fi

missing() {
    "$PY" - <<'EOF'
import importlib.util
needed = {"torch": "torch==2.13.0", "diffusers": "diffusers==0.42.1", "transformers": "transformers==5.23.0",
          "safetensors": "safetensors==0.8.0", "accelerate": "accelerate==1.15.0", "psutil": "psutil==7.2.2",
          "cachetools": "cachetools==8.0.0", "numpy": "numpy==2.4.6", "PIL": "pillow==12.3.0", "onnx": "onnx==1.23.2",
          "onnxruntime": "onnxruntime==1.31.1", "insightface": "insightface==2.1", "open_clip": "open-clip-torch==3.3.0",
          "cv2": "opencv-python-headless", "skimage": "scikit-image"}
print(" ".join(pin for module, pin in needed.items() if importlib.util.find_spec(module) is None))
EOF
}
todo=$(missing)
if [[ -n "$todo" ]]; then
    echo "== missing: $todo; trying pip (needs a reachable index)"
    # open-clip-torch only for its vocabulary file: --no-deps keeps torchvision out.
    for pin in $todo; do
        deps=(); [[ "$pin" == open-clip-torch* ]] && deps=(--no-deps)
        timeout 240 "$PY" -m pip install -q --timeout 15 --retries 0 "${deps[@]}" "$pin" || echo "   could not install $pin"
    done
    todo=$(missing)
    [[ -n "$todo" ]] && { echo "still missing: $todo. Run 'bash scripts/gpu_bench.sh wheels' where PyPI is reachable and carry .whl."; exit 3; }
fi

echo "== software"
"$PY" - <<'EOF'
import platform, torch
print(f"python {platform.python_version()} · torch {torch.__version__} · CUDA {torch.version.cuda} · cuDNN "
      f"{torch.backends.cudnn.version() if torch.cuda.is_available() else None} · GPU "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none visible to torch'}")
import diffusers, transformers, onnxruntime
print(f"diffusers {diffusers.__version__} · transformers {transformers.__version__} · onnxruntime {onnxruntime.__version__} "
      f"({', '.join(onnxruntime.get_available_providers())})")
EOF

elapsed=$(( $(date +%s) - start ))
budget=$(( TOTAL_S - elapsed - 60 ))  # 60 s for start-up, imports and the summary after the last row
(( budget > BUDGET_MAX )) && budget=$BUDGET_MAX
(( budget < 30 )) && budget=30
echo "== bench --suite gpu, budget ${budget} s (${elapsed} s spent before it)"
PYTHONUNBUFFERED=1 "$PY" app.py bench --suite gpu --budget-s "$budget" --json "$OUT_DIR/gpu.json" \
    --models-dir "$WORK/models" --outputs-dir "$WORK/outputs" --cache-dir "$WORK/cache" ${GPU_BENCH_EXTRA:-} 2>&1 \
    | tee "$OUT_DIR/gpu.log"
code=${PIPESTATUS[0]}
echo "== done: exit ${code}, $(( $(date +%s) - start )) s in all; figures in $OUT_DIR/gpu.json, log in $OUT_DIR/gpu.log"
exit "$code"
