#!/usr/bin/env bash
# Prepare wheels/ for benchmarks/gpu_check.sh on a machine without a package index.
#
#   bash benchmarks/gpu_wheels.sh                          # wheels for CPython 3.12 on x86-64 Linux
#   bash benchmarks/gpu_wheels.sh --python-version 3.11    # another target Python
#   bash benchmarks/gpu_wheels.sh --have target-freeze.txt # leave out what the target already has
#
# What goes in: the project's runtime dependencies and everything they need, at the versions
# installed in this checkout's .venv (the versions tested here), as binary wheels for the target
# Python and platform, plus setuptools (the build backend, so the project itself is built from the
# working tree there, offline). torch and the packages only torch needs are left out: a GPU
# machine brings its own CUDA build of torch, and the CPU wheel would not do. The whole set is
# ~136 MB (pyarrow alone 53 MB), over the 64 MiB a device call carries, so `--have FILE` (a
# `pip freeze` or `pip list` of the target, or one name per line) drops the wheels over 1 MiB of
# packages the target already has; small ones stay, in case a pin there needs another version
# (pip installs a carried wheel only where the installed version does not satisfy).
# wheels/requirements.txt lists the project's dependencies without torch; the script prints the
# folder's size.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
pyver=3.12
have=""
out=wheels
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) pyver=$2; shift 2 ;;
        --have) have=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "gpu_wheels.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -n "$have" ] && [ ! -f "$have" ]; then
    echo "gpu_wheels.sh: --have $have: no such file" >&2; exit 2
fi

mkdir -p "$out"
# name==version of every distribution to carry, from the installed metadata of this checkout's venv.
plan=$("$PYTHON" - "$pyver" "$have" "$out/requirements.txt" <<'EOF'
import re, sys, tomllib
from importlib import metadata
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pyver, have_file, req_out = sys.argv[1], sys.argv[2], sys.argv[3]
env = {"python_version": pyver, "python_full_version": pyver + ".0", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix"}
deps = [Requirement(r) for r in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]]
deps = [r for r in deps if canonicalize_name(r.name) != "torch"]
with open(req_out, "w") as f:  # what gpu_check.sh installs (torch is the target's own)
    f.write("# the project's dependencies without torch (benchmarks/gpu_wheels.sh)\n")
    f.writelines(f"{r}\n" for r in deps)
have = set()
if have_file:
    for line in open(have_file):
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if m and not line.lstrip().startswith(("#", "Package", "---")):
            have.add(canonicalize_name(m.group(1)))
skip = {"torch"}
installed = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
seen, todo, pins = set(), [(r, set(r.extras)) for r in deps], {}
while todo:
    req, extras = todo.pop()
    name = canonicalize_name(req.name)
    if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""})):
        continue
    if name in skip or (name, frozenset(extras)) in seen:
        continue
    seen.add((name, frozenset(extras)))
    if name not in installed:  # shipped inside another distribution (lightning_fabric in pytorch-lightning)?
        try:
            pins[name] = __import__(name.replace("-", "_")).__version__
        except (ImportError, AttributeError):
            sys.exit(f"gpu_wheels.sh: {req.name} is not installed in this environment: run scripts/setup.sh first")
        continue
    dist = installed[name]
    pins[name] = dist.version
    for line in dist.requires or []:
        sub = Requirement(line)
        marker_ok = sub.marker is None or any(sub.marker.evaluate({**env, "extra": e}) for e in (extras | {""}))
        if marker_ok:
            sub.marker = None
            todo.append((sub, set(sub.extras)))
pins["setuptools"] = metadata.version("setuptools")  # the build backend of pyproject.toml
print(" ".join(f"{n}=={v}" for n, v in sorted(pins.items())))
print(" ".join(sorted(have & pins.keys())))
EOF
)
pins=$(sed -n 1p <<<"$plan")
present=$(sed -n 2p <<<"$plan")
echo "Fetching $(wc -w <<<"$pins") distributions for CPython $pyver (torch excluded): $pins"
# shellcheck disable=SC2086  # one argument per pin
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$out" \
    --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform linux_x86_64 \
    $pins 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
dropped=""
for name in $present; do  # the target's own, where its wheel is large
    for whl in "$out"/*.whl; do
        stem=$(basename "$whl" | cut -d- -f1 | tr '[:upper:]_.' '[:lower:]--')
        if [ "$stem" = "$name" ] && [ "$(stat -c %s "$whl")" -gt 1048576 ]; then
            rm "$whl"; dropped="$dropped $name"
        fi
    done
done
[ -z "$dropped" ] || echo "Left out (over 1 MiB, the target has them):$dropped"
size=$(du -sm "$out" | cut -f1)
echo "$out/: $(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1) (a device call carries at most 64 MiB with the working tree)"
echo "largest:"
ls -S "$out"/*.whl | head -n 5 | xargs du -h | sed 's/^/  /'
if [ "$size" -gt 60 ]; then
    echo "gpu_wheels.sh: $out/ is over 60 MiB: pass --have with the target's pip freeze to leave out what it has" >&2
fi
