#!/usr/bin/env bash
# The GPU check of issue 16, in one short run: install the project from the wheels carried in
# wheels/ (no package index needed; the machine's own torch is kept), then fit in bf16-mixed,
# 16-mixed and 32-true on the bundled sample and the shared AG News split, the Predictor on CUDA,
# and the benchmark harness (benchmarks/gpu_check.py says what each step measures).
#
#   bash benchmarks/gpu_wheels.sh --have benchmarks/gpu_have_h200.txt   # here, with an index: fill wheels/
#   bash benchmarks/gpu_check.sh --out gpu_check_out                    # there, on the CUDA machine
#   bash benchmarks/gpu_check.sh --dry-run --out /tmp/gc                # any machine: CPU, tiny budgets
#
# Options: --out DIR (results: gpu_check.json, gpu_check.md, gpu_check.log; default gpu_check_out),
# --dry-run, --no-install, --wheels DIR (default wheels); anything after -- goes to gpu_check.py
# (e.g. -- --shared-data /path/holding/ag_news_7600 --bench-depths 9). PYTHON picks the interpreter
# (default python3; in a dry run .venv/bin/python when it exists). A dry run installs nothing: it
# asks pip what it would install from wheels/ (--dry-run), then runs every step on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

out=gpu_check_out
wheels=wheels
dry=0
install=1
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --wheels) wheels=$2; shift 2 ;;
        --dry-run) dry=1; shift ;;
        --no-install) install=0; shift ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    [ "$dry" = 1 ] && [ -x .venv/bin/python ] && PYTHON=.venv/bin/python
fi
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
start=$(date +%s)
echo "== gpu_check $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname); python: $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "available:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' \
    || { echo "gpu_check.sh: torch does not import in $PYTHON: install torch for this machine first (not carried)"; exit 2; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
had_build=0
[ -e build ] && had_build=1
pip_quiet=(--disable-pip-version-check --no-input --no-index --find-links "$wheels")
if [ "$install" = 0 ]; then
    echo "== install: skipped (--no-install)"
elif [ ! -f "$wheels/requirements.txt" ]; then
    echo "== install: skipped: no $wheels/requirements.txt (make it with bash benchmarks/gpu_wheels.sh); using what is installed"
elif [ "$dry" = 1 ]; then
    echo "== install (dry run: pip resolves from $wheels/ and installs nothing)"
    "$PYTHON" -m pip install --dry-run "${pip_quiet[@]}" -r "$wheels/requirements.txt"
    "$PYTHON" -m pip install --dry-run --no-deps "${pip_quiet[@]}" .
else
    echo "== install from $wheels/ (the dependencies without torch, then the project from this tree)"
    t0=$(date +%s)
    "$PYTHON" -m pip install --quiet "${pip_quiet[@]}" -r "$wheels/requirements.txt"
    "$PYTHON" -m pip install --quiet --no-deps --force-reinstall "${pip_quiet[@]}" .
    echo "install: $(( $(date +%s) - t0 )) s"
fi
[ "$had_build" = 1 ] || rm -rf build  # setuptools' build folder from the install above

args=(--out "$out")
[ "$dry" = 1 ] && args+=(--dry-run)
status=0
"$PYTHON" benchmarks/gpu_check.py "${args[@]}" "${extra[@]}" || status=$?
echo "== gpu_check: $(( $(date +%s) - start )) s in all, exit status $status"
exit "$status"
