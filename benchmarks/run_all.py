"""Every speed and scale measurement of docs/performance.md in one command, one report.

    .venv/bin/python benchmarks/run_all.py --out bench_out           # the full set (bench.py alone: ~30 min on 2 cores)
    .venv/bin/python benchmarks/run_all.py --out /tmp/smoke --quick  # tiny budgets: checks the harnesses (CI)

Runs, each in its own process (so one's memory does not count in another's peak), and writes
each table to --out plus all of them, in order, to report.md:
- bench.py: training and prediction against the paper-style reference script, default fit and
  `Predictor` rows, int8, and issue 16's targets with their ceilings (depths 9 and 29);
- scale.py: the data path against the number of rows (10 k, 100 k, 1 M);
- cost_grid.py: training and prediction cost against depth (9-49) and text length (128-1024).
Arguments after `--` go to bench.py (e.g. `-- --depths 9 --no-int8`). The GPU check is separate
(benchmarks/gpu_check.sh: it installs the project on the CUDA machine first).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS = {  # name -> (script, full-run arguments)
    "bench": ("bench.py", []),
    "scale": ("scale.py", ["--rows", "10000", "100000", "1000000"]),
    "cost_grid": ("cost_grid.py", []),
}


def main(argv: list[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the tables and report.md")
    parser.add_argument("--quick", action="store_true", help="each harness's tiny budget: checks them, not the speed")
    parser.add_argument("--only", nargs="+", choices=list(STEPS), default=list(STEPS), help="run only these")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = []
    for name in args.only:
        script, full = STEPS[name]
        table = args.out / f"{name}.md"
        cmd = [sys.executable, str(HERE / script), "--output", str(table), *(["--quick"] if args.quick else full)]
        if name == "bench":
            cmd += extra
        if name == "scale":  # its CSVs and caches, removed size by size
            cmd += ["--work_dir", str(args.out / "scale_work")]
        print(f"[run_all] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        report.append(f"## {script} ({time.perf_counter() - t0:.0f} s)\n\n`{' '.join(['python', *cmd[1:]])}`\n\n{table.read_text()}")
    path = args.out / "report.md"
    path.write_text("\n".join(report))
    print(path)
    return path


if __name__ == "__main__":
    main()
