"""Smoke test of the benchmark harness: a tiny budget, checks only that the table is well formed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("vdcnn_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_run_prints_a_markdown_table(tmp_path: Path) -> None:
    bench = _load_bench()
    try:
        bench.load_texts("ag_news", 4)
    except FileNotFoundError:
        pytest.skip("no AG News texts available")
    out = tmp_path / "table.md"
    table = bench.main(["--quick", "--depths", "9", "--output", str(out)])
    assert out.read_text().strip() == table.strip()
    rows = [line for line in table.splitlines() if line.startswith("|")]
    header, rule, *body = rows
    n_cols = header.count("|")
    assert set(rule) <= {"|", "-"} and rule.count("|") == n_cols
    assert all(row.count("|") == n_cols for row in body)
    kinds = [row.split("|")[2].strip() for row in body]
    assert kinds.count("train") >= 4 and kinds.count("inference") == 3
    for row in body:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[3]) > 0  # samples/s
    assert "Matmul peak" in table


def test_longdoc_reproduction_is_deterministic_and_long(tmp_path: Path) -> None:
    """benchmarks/longdoc/make_longdoc.py (issue 20): same seed, same files; every document is long."""
    import subprocess

    script = BENCH.parent / "longdoc" / "make_longdoc.py"
    if not (BENCH.parents[1].parent / "shared" / "data" / "ag_news_7600").is_dir():
        pytest.skip("../shared/data is not beside the checkout")
    for out in ("a", "b"):
        subprocess.run([sys.executable, str(script), str(tmp_path / out), "--source", "ag_news",
                        "--train-per-class", "20", "--eval-per-class", "5"], check=True, capture_output=True)
    for split in ("train", "valid", "test"):
        a, b = (tmp_path / out / f"{split}.tsv" for out in ("a", "b"))
        assert a.read_bytes() == b.read_bytes()
    rows = (tmp_path / "a" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert len(rows) == 4 * 20 and all(len(r.split("\t")[0]) > 512 for r in rows)
