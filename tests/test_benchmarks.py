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


def _load_script(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def no_bench_data(tmp_path_factory: pytest.TempPathFactory):
    """The harnesses read the shared splits and the reference script where they find them: here
    they find neither, as in a user's clone, whatever lies beside this checkout (the tests marked
    `shared` name the shared folder themselves)."""
    missing = tmp_path_factory.mktemp("no_shared") / "absent"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VDCNN_BENCH_DATA", str(missing / "data"))
        mp.setenv("VDCNN_BENCH_REFERENCE", str(missing / "bench" / "paper_style_vdcnn.py"))
        yield


def run_all(out: Path, only: list[str], *extra: str) -> Path:
    """One `benchmarks/run_all.py --quick --only ...` (what CI runs of the harnesses) into `out`."""
    # int8's export and calibration (tests/inference/test_quantize.py) would double the harness's time.
    report = _load_script(BENCH.parent / "run_all.py", "vdcnn_run_all").main(
        ["--out", str(out), "--quick", "--only", *only, "--", *extra])
    assert report == out / "report.md"
    text = report.read_text()
    assert all((out / f"{name}.md").read_text() in text for name in only)
    return out


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of the quick run of bench.py and cost_grid.py (the harnesses that need no shared data)."""
    return run_all(tmp_path_factory.mktemp("run_all"), ["bench", "cost_grid"], "--no-int8")


def test_quick_run_prints_a_markdown_table(quick_report: Path) -> None:
    bench = _load_bench()
    table = (quick_report / "bench.md").read_text()
    results, targets = table.split("Targets (issue 16)")
    rows = [line for line in results.splitlines() if line.startswith("|")]
    header, rule, *body = rows
    n_cols = header.count("|")
    assert set(rule) <= {"|", "-"} and rule.count("|") == n_cols
    assert all(row.count("|") == n_cols for row in body)
    kinds = [row.split("|")[2].strip() for row in body]
    names = [row.split("|")[3].strip() for row in body]
    assert kinds.count("train") >= 5 and kinds.count("inference") >= 3
    assert bench.DEFAULT_TRAIN in names and bench.DEFAULT_INFER in names
    assert not bench.REFERENCE.is_file()  # no_bench_data: without the reference script this code's default leads
    assert not names[0].startswith("reference") and not names[kinds.index("inference")].startswith("reference")
    for row in body:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[3]) > 0  # samples/s
    assert float(body[0].split("|")[5]) == 1.0
    assert "Matmul peak" in table and ("Reference: not found at " + str(bench.REFERENCE)) in table
    goals = [line for line in targets.splitlines() if line.startswith("| 9 |")]
    assert any("train: " + bench.DEFAULT_TRAIN in g and ">= 6x" in g for g in goals)
    assert any("inference: " + bench.DEFAULT_INFER in g and ">= 12x" in g for g in goals)


def test_reference_script_is_loaded_from_its_file_or_reported_missing(tmp_path: Path) -> None:
    bench = _load_bench()
    assert bench.load_reference(tmp_path / "missing.py") is None
    script = tmp_path / "ref.py"
    script.write_text("def vdcnn(depth, n):\n    return depth * n\n")
    assert bench.load_reference(script).vdcnn(9, 4) == 36


def test_default_fit_rows_build_what_the_cli_builds() -> None:
    """The harness's "default fit" is the CLI's text default: the n-gram bag with its own loss."""
    from vdcnn_res.cli.lightning import TEXT_BRANCH_LOSS, TEXT_NGRAMS

    bench = _load_bench()
    module = bench.default_classifier(9, 72)
    assert list(module.arch.ngram_orders) == TEXT_NGRAMS["model.arch.ngram_orders"]
    assert module.arch.ngram_buckets == TEXT_NGRAMS["model.arch.ngram_buckets"]
    assert module.branch_loss == TEXT_BRANCH_LOSS and module.arch.depth == 9
    assert bench.default_classifier(29, 72, ngrams=False).model.ngrams is None
    assert module.arch.masked_norm and not bench.default_classifier(9, 72, masked_norm=False).arch.masked_norm
    assert bench.data_defaults() == {"max_length": 512, "batch_size": 32, "pad_multiple": 8}


def make_longdoc(shared: Path, out: Path, *args: str) -> None:
    """benchmarks/longdoc/make_longdoc.py in this process, reading the shared folder the test was given."""
    module = _load_script(BENCH.parent / "longdoc" / "make_longdoc.py", "vdcnn_make_longdoc")
    module.DATA = shared / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["make_longdoc.py", str(out), *args])
        module.main()


@pytest.mark.shared("data/ag_news_7600")
def test_longdoc_reproduction_is_deterministic_and_long(tmp_path: Path, shared_dir: Path) -> None:
    """benchmarks/longdoc/make_longdoc.py (issue 20): same seed, same files; every document is long."""
    for out in ("a", "b"):
        make_longdoc(shared_dir, tmp_path / out, "--source", "ag_news", "--train-per-class", "20", "--eval-per-class", "5")
    for split in ("train", "valid", "test"):
        a, b = (tmp_path / out / f"{split}.tsv" for out in ("a", "b"))
        assert a.read_bytes() == b.read_bytes()
    rows = (tmp_path / "a" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert len(rows) == 4 * 20 and all(len(r.split("\t")[0]) > 512 for r in rows)


@pytest.mark.slow
@pytest.mark.shared("data/ag_news_7600")
@pytest.mark.usefixtures("one_thread")
def test_tiny_longdoc_reproduction_leaves_chance_only_with_a_centred_head(tmp_path: Path, shared_dir: Path) -> None:
    """Issue 20 in small: long documents (boilerplate first, 160 of them, 4 classes) through the default
    depth-9 network and its 4096 -> 2048 -> 2048 head, AdamW lr 1e-3. With the paper's head the first
    steps kill fc1 and the loss ends at chance (ln 4); with `head_norm="batch"` or `"layer"` it falls far below."""
    import math

    import pandas as pd
    import torch
    from torch import nn

    from vdcnn_res.data.tokenizer import build_tokenizer, encode
    from vdcnn_res.model import create_model

    make_longdoc(shared_dir, tmp_path, "--source", "ag_news", "--train-per-class", "40", "--eval-per-class", "1")
    rows = pd.read_csv(tmp_path / "train.tsv", sep="\t")
    classes = sorted(rows.label.unique())
    labels = torch.tensor([classes.index(name) for name in rows.label])
    tokenizer = build_tokenizer("char")
    encoded = encode(tokenizer, rows.text.tolist(), 512)
    ids = torch.zeros(len(encoded), 512, dtype=torch.long)
    for i, row in enumerate(encoded):
        ids[i, : len(row)] = torch.tensor(row)
    chance = math.log(len(classes))

    def train(head_norm: str, steps: int = 18) -> tuple[float, float]:
        torch.manual_seed(0)
        model = create_model("vdcnn9", num_classes=len(classes), vocab_size=tokenizer.get_vocab_size(),
                             head_norm=head_norm)  # fmt: skip
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
        order = torch.Generator().manual_seed(0)
        fc1 = model.head.fc1
        pre: list[torch.Tensor] = []
        fc1.register_forward_hook(lambda module, args, out: pre.append(out.detach()))
        losses = []
        for _ in range(steps):
            batch = torch.randperm(len(labels), generator=order)[:32]
            pre.clear()
            loss = nn.functional.cross_entropy(model(ids[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        last = losses[-steps // 3 :]
        return sum(last) / len(last), float((pre[0] <= 0).all(dim=0).float().mean())

    loss, dead = train("none")
    assert loss > 0.9 * chance and dead > 0.9, (loss, dead)  # at chance, fc1 dead
    for centred in ("batch", "layer"):  # centred over the batch, or over each text's features
        loss, dead = train(centred)
        assert loss < 0.5 * chance and dead < 0.1, (centred, loss, dead)


@pytest.mark.shared("data/ag_news_7600/train.csv", "data/dbpedia14_14k/train.csv")
def test_scale_quick_run_prints_one_row_per_size(tmp_path: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/scale.py (issue 16, scale curves): every size measured in its own process, one table row each."""
    monkeypatch.setenv("VDCNN_BENCH_DATA", str(shared_dir / "data"))  # scale.py draws its rows from the shared splits
    quick_report = run_all(tmp_path, ["scale"])
    rows = [line.split("|")[1:-1] for line in (quick_report / "scale.md").read_text().splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[1:]
    assert [r[0].strip() for r in body] == ["1,000", "2,000"]
    for row in body:
        assert len(row) == len(header)
        assert float(row[2].replace(",", "")) > 0 and float(row[9]) > 0  # setup rows/s, train samples/s
    assert not any((quick_report / "scale_work").glob("rows*"))  # each size's CSVs and cache are removed


def test_cost_grid_quick_run_has_one_row_per_depth_and_length(quick_report: Path) -> None:
    """benchmarks/cost_grid.py (issue 16): training and prediction cost against depth and length."""
    table = (quick_report / "cost_grid.md").read_text()
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and "depth" not in line]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [("9", "64"), ("9", "128")]
    assert all(float(c) > 0 for r in rows for c in r[2:])


def test_masked_norm_cost_quick_run_compares_each_pair(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """benchmarks/masked_norm_cost.py --quick: one row per configuration, a ratio per pair."""
    module = _load_script(BENCH.parent / "masked_norm_cost.py", "vdcnn_masked_norm_cost")
    table = module.main(["--quick"])
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and "samples/s" not in line]
    pairs = 3 if module.PLAID.is_file() else 2  # a PLAID fit's own batches need ../shared
    assert len(rows) == 2 * pairs and all(float(r[1]) > 0 for r in rows)
    assert [bool(r[2].strip()) for r in rows] == [True, False] * pairs
