#!/bin/bash
# The device check as one prepared run on a lent GPU machine (as used for BENCHMARKS.md):
# the environment, benchmarks/gpu_check.py, its seed and IPC rows with stretched spins off
# and on (and spin.py), the GPU tests, benchmarks/cuda_costs.py and cast_threads.py, then the
# whole suite while the time budget lasts. Everything lands in
# $OUT (default gpu-results/).
#
#   OUT=gpu-results BUDGET=400 FULL=1 BENCH=0 bash benchmarks/gpu_session.sh
#
# The GPU image has no pyzmq: benchmarks/gpu_wheels.sh puts its wheel (with UCX=1, ucxx's
# too) in .whl/ beforehand; they are installed into /tmp/site. FULL=0 skips the whole suite;
# BENCH=1 adds the issue-5 tcp figure (benchmarks/wire.py, 100 MB) on that machine's CPUs.
# Where ucxx imports, the ucx:// tests run too (UCX_TLS as set, else tcp,sm,self: conftest).
set -u
START=$(date +%s); BUDGET=${BUDGET:-400}; OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:$PWD/tests:${PYTHONPATH:-}
# The native cast kernel, built in place as pip would (no pip install here); without a
# compiler the casts fall back to torch, and env.txt says so.
SUFFIX=$(python3 -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
cc -O2 -std=gnu11 -fPIC -shared -fvisibility=hidden -o "src/tensorwire/codec/_fastcast$SUFFIX" \
  src/tensorwire/codec/_fastcast.c -lpthread 2>&1 | tail -3 || true
{
  nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import sys,torch,numpy,zmq;print(sys.version);print('torch',torch.__version__,torch.version.cuda,'numpy',numpy.__version__,'zmq',zmq.__version__,zmq.zmq_version())"
  ldd --version | head -1; ulimit -l; nproc; uname -r; git rev-parse --short HEAD
  python3 -c "from tensorwire.codec import _native; print('native cast kernel:', _native.best_isa())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
echo "=== gpu_check left=$(left)"
timeout 200 python3 benchmarks/gpu_check.py --json "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log"
echo "=== stretched spins left=$(left)"  # the seed and IPC rows without and with (_spin.py)
for i in 1 2; do
  [ "$(left)" -gt 150 ] || break
  for s in 0 1; do
    TENSORWIRE_STRETCH_SPIN=$s timeout 90 python3 benchmarks/gpu_check.py --only seed ipc \
      --json "$OUT/stretch${s}_$i.json" 2>&1 | grep -E "^(seed|ipc) " | sed "s/^/stretch=$s: /"
  done
done
[ "$(left)" -gt 100 ] && timeout 60 python3 benchmarks/spin.py --json "$OUT/spin.json" 2>&1 | tail -7
echo "=== gpu tests left=$(left)"
timeout 120 python3 -m pytest -q -p no:cacheprovider --timeout 90 -rs -W ignore tests/test_gpu.py \
  tests/test_cuda_ipc.py tests/test_ops.py -k "cuda or gpu or ipc" 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
echo "=== costs left=$(left)"
timeout 90 python3 benchmarks/cuda_costs.py --json "$OUT/cuda_costs.json" \
  --profile "$OUT/server_ipc.prof" 2>&1 | tee "$OUT/costs.log"
echo "=== cast threads left=$(left)"  # the cast pool on a many-CPU host, and whether 8 pay
timeout 60 python3 benchmarks/cast_threads.py --sizes 4MB,10MB --threads 1,4,8 --rounds 4 \
  --reps 100 --json "$OUT/cast_threads.json" 2>&1 | tee "$OUT/cast_threads.log" | tail -9
if python3 -c "import ucxx" 2>/dev/null; then
  echo "=== ucx tests left=$(left)"
  timeout 120 python3 -m pytest -q -p no:cacheprovider --timeout 60 -rs -W ignore \
    tests/test_ucx.py tests/test_conformance.py -k ucx 2>&1 | tee "$OUT/ucx_tests.log" | tail -15
fi
if [ "${BENCH:-0}" = 1 ]; then
  echo "=== wire.py left=$(left)"
  timeout 120 python3 benchmarks/wire.py --sizes 100MB --reps-scale 2 \
    --json "$OUT/wire.json" 2>&1 | tee "$OUT/wire.log" | tail -25
fi
L=$(left); echo "=== full suite left=$L"
if [ "${FULL:-1}" = 1 ] && [ "$L" -gt 60 ]; then
  timeout $((L - 15)) python3 -m pytest -q -p no:cacheprovider -n 12 --timeout 120 -W ignore tests \
    > "$OUT/suite.log" 2>&1; echo "suite rc=$?"
  grep -E "passed|failed|error" "$OUT/suite.log" | tail -3; grep -E "^(FAILED|ERROR)" "$OUT/suite.log" | head -40
fi
echo "=== done after $(( $(date +%s) - START )) s"
