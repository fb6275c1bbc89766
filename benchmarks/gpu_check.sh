#!/usr/bin/env bash
# The whole GPU check in one command, from the repository root of a GPU machine:
#   bash benchmarks/gpu_check.sh
# Prints the GPU and library versions, runs the whole test suite with the CuPy backend usable
# (every backend-parametrised test then runs on CuPy too), then the benchmark suite on the GPU and
# the CPU side by side with PyTorch (skip it with GPUNN_SKIP_BENCH=1), and writes a short report
# and the raw outputs into $OUT if set, else benchmarks/results/gpu-check-<date>/ (at most 9 files
# and one folder).
# Nothing is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results/gpu-check-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 GPUNN_BACKEND=cupy

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
    python3 -c 'import sys, numpy, cupy, gpunn; print("python", sys.version.split()[0]); print("numpy", numpy.__version__); print("cupy", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion()); print("gpunn", gpunn.__version__, "backends", gpunn.available_backends())'
    python3 -m gpunn info
} 2>&1 | tee "$out/environment.txt"

# Issue 21's items first, short, so that their verdicts come back even if the long suite does not:
# item 1 (each rank's GPU) and the stand-in's device, fence and graph-key checks as the CPU sees
# them, with the real CuPy importable; item 2 (torch captures Adam/AdamW: capturable=True) on the GPU.
python3 -m pytest -p no:cacheprovider -q tests/distributed/test_rank_device.py tests/backends/test_cupy_standin_devices.py \
    tests/backends/test_grid_memory_order.py tests/train/test_graph_key.py tests/bench/test_torch_peer.py \
    2>&1 | tee "$out/issue21-first.log"
python3 -m gpunn bench --backend cupy --peers torch-cuda-graph,gpunn-cupy-graph -k "adam" --max-time 0.2 \
    --out "$out/issue21-adam" 2>&1 | tail -n 20 | tee -a "$out/issue21-first.log"
# The kernel cost model's predictions (sm_90 and sm_80 SASS; needs nvdisasm: pip install nvidia-cuda-nvdisasm),
# then the measured fractions of copy bandwidth to hold them against (the activation group).
python3 -m gpunn bench --cost-model --out "$out" 2>&1 | tee -a "$out/issue21-first.log"  # ~500 rows: both tables whole
python3 -m gpunn bench --backend cupy --case activation --max-time 0.2 --out "$out/issue21-activation" 2>&1 \
    | tail -n 40 | tee -a "$out/issue21-first.log"

# A GPU machine may reach no package index: the two tests that build a wheel in an isolated
# environment or ask pip's resolver about the extras run on CI instead.
python3 -m pytest -p no:cacheprovider -ra tests --deselect tests/test_packaging.py --deselect tests/backends/test_extras.py \
    --junitxml="$out/tests.xml" 2>&1 | tee "$out/tests.log"
status=${PIPESTATUS[0]}

if [ "${GPUNN_SKIP_BENCH:-0}" != 1 ]; then
    python3 -m gpunn bench --backend all --max-time "${GPUNN_BENCH_MAX_TIME:-0.5}" --out "$out" >"$out/bench.log" 2>&1 \
        || echo "gpunn bench failed: see $out/bench.log" | tee -a "$out/environment.txt"
    tail -n 80 "$out/bench.log"
fi

python3 - "$out" "$status" <<'PY'
import sys, xml.etree.ElementTree as ET
out, status = sys.argv[1], sys.argv[2]
suite = ET.parse(f"{out}/tests.xml").getroot().find("testsuite")
total, failures, errors, skipped = (int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped"))
environment = open(f"{out}/environment.txt").read().strip()
failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
          if case.find("failure") is not None or case.find("error") is not None]
gpu_cases = [case for case in suite.iter("testcase")
             if ("[cupy" in case.get("name") or case.get("classname").endswith("test_cupy_parity"))
             and "cupy-standin" not in case.get("name")]  # the CPU stand-in runs everywhere
gpu_ran = sum(1 for case in gpu_cases if case.find("skipped") is None)
with open(f"{out}/REPORT.md", "w") as report:
    report.write(f"# GPU check\n\n```\n{environment}\n```\n\n")
    report.write(f"pytest exit status {status}: {total} tests, {total - failures - errors - skipped} passed, "
                 f"{failures} failed, {errors} errors, {skipped} skipped; {gpu_ran} CuPy tests ran.\n")
    for name in failed:
        report.write(f"- FAILED {name}\n")
print(open(f"{out}/REPORT.md").read())
PY
exit "$status"
