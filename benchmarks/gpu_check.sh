#!/usr/bin/env bash
# The one prepared GPU run (device tool): build with CUDA, run the test suite on the GPU, the op
# benchmarks and the end-to-end NCSN comparison; full logs and JSON under $OUT, a short table last.
#
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=600)                  # everything
#   run(command="bash benchmarks/gpu_check.sh build tests", timeout_s=420)       # or in two calls:
#   run(command="bash benchmarks/gpu_check.sh build copy_rate bench_ops e2e", timeout_s=540)
#
# The device lease is 15 minutes in all (start-up included), so every stage has its own time limit
# and a failing or slow stage does not stop the later ones; the table at the end says which ran.
set -uo pipefail
OUT=${OUT:-/tmp/fastscore-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
cd "$(dirname "$0")/.."
STAGES=" ${*:-build info tests copy_rate bench_ops e2e} "

stage() {  # stage NAME SECONDS COMMAND...: run if asked for, with a limit; log to $OUT/NAME.log
    local name=$1 limit=$2; shift 2
    [[ $STAGES == *" $name "* ]] || return 0
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "$name rc=$? $((SECONDS - start))s" | tee -a "$OUT/stages.txt"
}

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,temperature.gpu --format=csv >"$OUT/gpu.txt" 2>&1
stage build 180 pip install --no-build-isolation --no-deps -e .
stage info 120 python -m fastscore info
stage tests 240 python -m pytest -x -q -p no:cacheprovider --junitxml="$OUT/tests.xml" tests
stage copy_rate 30 python benchmarks/copy_rate.py --json "$OUT/copy_rate.json"
stage bench_ops 150 python -m pytest -q -s -p no:cacheprovider benchmarks/test_bench_ops.py \
    --benchmark-disable-gc --benchmark-json="$OUT/bench_ops.json" --benchmark-min-rounds=10
stage e2e 200 python benchmarks/e2e.py --json "$OUT/e2e.json"

echo
cat "$OUT/gpu.txt" "$OUT/stages.txt"
[[ -f $OUT/info.log ]] && tail -n 8 "$OUT/info.log"
[[ -f $OUT/tests.log ]] && tail -n 3 "$OUT/tests.log"
[[ -f $OUT/copy_rate.log ]] && cat "$OUT/copy_rate.log"
[[ -f $OUT/bench_ops.log ]] && sed -n '/fastscore op speed-ups/,$p' "$OUT/bench_ops.log" | head -n 40
[[ -f $OUT/e2e.log ]] && tail -n 12 "$OUT/e2e.log"
exit 0
