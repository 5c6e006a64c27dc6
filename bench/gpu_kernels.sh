#!/usr/bin/env bash
# One command for the H200 (device machine): probes of the newest kernel code paths, the GPU
# kernel tests, the kernel benchmark and the TopK SAE training-step benchmark, everything
# written under $OUT (about 4 minutes, at most 6: each stage has its own time limit).
#
#   bash bench/gpu_kernels.sh
#
# Carry (for the sparsify comparison) the four wheels eai_sparsify, natsort, simple_parsing,
# docstring_parser from /work/shared/wheels/h200-py312/ in an ignored folder `.whl/` of the
# checkout; without them the sparsify rows record an ImportError and the rest still runs.
# A stage that fails or times out leaves its log and whatever JSON it had written, and the
# next stage still runs. Stages share Triton's on-disk compile cache, so kernels the tests
# compiled load quickly in the benchmarks.
#
# Outputs: gpu.txt (machine), kernels-gpu-features.txt (probes of the newest code paths),
# kernels-gpu-tests.txt (+ .xml: pytest -x -rA --tb=short, so a failure comes with its
# traceback), kernels-bench.txt + kernels-h200.json, train-step.txt + train-step-h200.json
# + train-step-profile.txt (CUDA kernels per step). Stage limits 30 + 105 + 130 + 90 s.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
started=$(date +%s)

wheels=$(ls .whl/eai_sparsify*.whl .whl/natsort*.whl .whl/simple_parsing*.whl .whl/docstring_parser*.whl 2>/dev/null)
if [ -n "$wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name(0))'
} > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

# Probes of the newest code paths first, on their own: a failing one is switched off for
# everything after it (a fault there must not take the tests and benchmarks down).
echo "== GPU feature probes (tests/kernels/test_gpu_features.py)"
WORKBENCH_KERNELS_TUNE=0 timeout 30 python3 -m pytest -rA --tb=short -q -p no:cacheprovider -m gpu \
  tests/kernels/test_gpu_features.py > "$OUT/kernels-gpu-features.txt" 2>&1
echo "probes exit status $? ($(( $(date +%s) - started )) s)"; grep -E "^(PASSED|FAILED|ERROR)" "$OUT/kernels-gpu-features.txt"
probe_ok() { grep -qE "^PASSED .*$1" "$OUT/kernels-gpu-features.txt" && ! grep -qE "^(FAILED|ERROR) .*$1" "$OUT/kernels-gpu-features.txt"; }
probe_ok test_fast_topk_routes || { export WORKBENCH_KERNELS_TOPK=torch; echo "fast top-k routes OFF for the rest"; }
probe_ok test_direct_launch || { export WORKBENCH_KERNELS_DIRECT=0; echo "direct launches OFF for the rest"; }

# Tests: first launch config of each kernel (quick compiles); one test turns tuning on to
# compile and cross-check every candidate of the decode gathers.
echo "== GPU tests (pytest -m gpu tests/kernels)"
WORKBENCH_KERNELS_TUNE=0 timeout "${GPU_TESTS_S:-105}" python3 -m pytest -x -rA --tb=short -q -p no:cacheprovider -m gpu tests/kernels \
  --ignore=tests/kernels/test_gpu_features.py --junitxml="$OUT/kernels-gpu-tests.xml" > "$OUT/kernels-gpu-tests.txt" 2>&1
echo "pytest exit status $? ($(( $(date +%s) - started )) s)"; tail -n 25 "$OUT/kernels-gpu-tests.txt"

echo "== kernel benchmark"
timeout 130 python3 bench/kernels.py --out "$OUT" --budget-s 95 --reserve-s 30 > "$OUT/kernels-bench.txt" 2>&1
echo "bench exit status $? ($(( $(date +%s) - started )) s)"; sed -n '/^=====/,$p' "$OUT/kernels-bench.txt" | tail -n 45

echo "== training-step benchmark"
timeout 90 python3 bench/train_step_gpu.py --out "$OUT" --steps 15 --warmup 3 > "$OUT/train-step.txt" 2>&1
echo "train-step exit status $? ($(( $(date +%s) - started )) s)"; tail -n 18 "$OUT/train-step.txt"
