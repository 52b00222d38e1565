"""TextDataModule: every source layout, labels, validation carving, batches, user errors."""

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch

from vdcnn_res.data.batching import texts_to_batches
from vdcnn_res.data import TextDataModule
from vdcnn_res.data.tokenizer import PAD_ID, UNK_ID, encode

from fixtures.tiny import REPO  # noqa: E402
SAMPLE = REPO / "data" / "ag_news_sample"
CLASSES = ("sport", "tech", "world")


def make_rows(n: int = 30, prefix: str = "row", classes=CLASSES) -> list[dict]:
    """Unique lower-case texts of varied length (title + description) with a label each."""
    return [
        {
            "title": f"{prefix} {i}",
            "description": f"{classes[i % len(classes)]} " + "news " * (i % 7 + 1),
            "label": classes[i % len(classes)],
        }
        for i in range(n)
    ]


def write_csv(path: Path, rows: list[dict], columns: list[str], *, header: bool = True, sep: str = ",") -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter=sep)
        if header:
            writer.writerow(columns)
        writer.writerows([[r[c] for c in columns] for r in rows])
    return path


def with_int_labels(rows: list[dict], offset: int = 0) -> list[dict]:
    return [{**r, "label": CLASSES.index(r["label"]) + offset} for r in rows]


def collect(loader, tokenizer) -> dict[int, tuple[str, int]]:
    """index -> (decoded text, label id) over every batch of a loader."""
    seen: dict[int, tuple[str, int]] = {}
    for batch in loader:
        for row, index in enumerate(batch["index"].tolist()):
            n = int(batch["lengths"][row])
            assert index not in seen
            seen[index] = (tokenizer.decode(batch["input_ids"][row, :n].tolist()), int(batch["labels"][row]))
    return seen


def text(row: dict, sep: str = " ") -> str:
    return f"{row['title']}{sep}{row['description']}"


def assert_split_matches(dm: TextDataModule, loader, rows: list[dict], label_of=lambda r: r["label"], sep: str = " "):
    seen = collect(loader, dm.tokenizer)
    assert sorted(seen) == list(range(len(rows)))
    for index, (decoded, label) in seen.items():
        assert decoded == text(rows[index], sep)
        assert dm.label_names[label] == str(label_of(rows[index]))


# ----------------------------------------------------------------------------- sources


def test_csv_with_header_and_0_based_int_labels(tmp_path):
    rows = with_int_labels(make_rows())
    train = write_csv(tmp_path / "train.csv", rows, ["label", "title", "description"])
    dm = TextDataModule(train=str(train), valid=str(train), text_columns=["title", "description"], batch_size=8)
    assert dm.label_names == ["0", "1", "2"] and dm.num_classes == 3
    dm.setup("fit")
    assert_split_matches(dm, dm.val_dataloader(), rows)


def test_headerless_csv_zhang_layout_with_classes_file(tmp_path):
    rows = with_int_labels(make_rows(), offset=1)
    train = write_csv(tmp_path / "train.csv", rows, ["label", "title", "description"], header=False)
    (tmp_path / "classes.txt").write_text("Sport\nTech\nWorld\n")
    dm = TextDataModule(
        train=str(train),
        valid=str(train),
        column_names=["label", "title", "description"],
        text_columns=["title", "description"],
        label_offset=1,
        classes_file=str(tmp_path / "classes.txt"),
        batch_size=8,
    )
    assert dm.label_names == ["Sport", "Tech", "World"]
    dm.setup("fit")
    assert_split_matches(dm, dm.val_dataloader(), rows, label_of=lambda r: ["Sport", "Tech", "World"][r["label"] - 1])


def test_1_based_int_labels_without_classes_file(tmp_path):
    rows = with_int_labels(make_rows(), offset=1)
    train = write_csv(tmp_path / "train.csv", rows, ["label", "title", "description"])
    dm = TextDataModule(train=str(train), valid=str(train), text_columns=["title", "description"], label_offset=1)
    assert dm.label_names == ["1", "2", "3"]
    dm.setup("fit")
    assert_split_matches(dm, dm.val_dataloader(), rows)


def test_tsv_with_string_labels(tmp_path):
    rows = make_rows()
    rows = [{"text": text(r), "label": r["label"].upper()} for r in rows]
    path = write_csv(tmp_path / "train.tsv", rows, ["text", "label"], sep="\t")
    dm = TextDataModule(train=str(path), valid=str(path), batch_size=4)
    assert dm.label_names == ["SPORT", "TECH", "WORLD"]  # sorted distinct training labels
    dm.setup("fit")
    seen = collect(dm.val_dataloader(), dm.tokenizer)
    for index, (decoded, label) in seen.items():
        assert decoded == rows[index]["text"] and dm.label_names[label] == rows[index]["label"]


def test_csv_cells_like_na_stay_text(tmp_path):
    rows = [{"text": t, "label": lab} for t, lab in [("na", "a"), ("null", "b"), ("", "a"), ("none", "b"), ("123", "a")]]
    path = write_csv(tmp_path / "train.csv", rows, ["text", "label"])
    dm = TextDataModule(train=str(path), valid=str(path))
    dm.setup("fit")
    seen = collect(dm.val_dataloader(), dm.tokenizer)
    assert [seen[i][0] for i in range(5)] == ["na", "null", "", "none", "123"]


@pytest.mark.parametrize("layout", ["json", "jsonl"])
def test_json_and_jsonl(tmp_path, layout):
    rows = make_rows()
    path = tmp_path / f"train.{layout}"
    if layout == "json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = TextDataModule(train=str(path), valid=str(path), text_columns=["title", "description"])
    assert dm.label_names == list(CLASSES)
    dm.setup("fit")
    assert_split_matches(dm, dm.val_dataloader(), rows)


def classlabel_dataset(rows: list[dict], names: list[str]) -> datasets.Dataset:
    features = datasets.Features(
        {"title": datasets.Value("string"), "description": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    )
    return datasets.Dataset.from_list([{**r, "label": names.index(r["label"])} for r in rows], features=features)


def test_parquet_with_classlabel_keeps_its_names(tmp_path):
    rows = make_rows()
    names = ["world", "sport", "tech"]  # not sorted: the feature's order must win
    classlabel_dataset(rows, names).to_parquet(str(tmp_path / "train.parquet"))
    dm = TextDataModule(train=str(tmp_path / "train.parquet"), valid=str(tmp_path / "train.parquet"),
                        text_columns=["title", "description"])
    assert dm.label_names == names
    dm.setup("fit")
    assert_split_matches(dm, dm.val_dataloader(), rows)


def test_glob_reads_every_matching_file(tmp_path):
    rows = with_int_labels(make_rows(40))
    write_csv(tmp_path / "part-1.csv", rows[:25], ["label", "title", "description"])
    write_csv(tmp_path / "part-2.csv", rows[25:], ["label", "title", "description"])
    dm = TextDataModule(train=str(tmp_path / "part-*.csv"), valid=str(tmp_path / "part-*.csv"),
                        text_columns=["title", "description"])
    dm.setup("fit")
    assert_split_matches(dm, dm.val_dataloader(), rows)


def test_text_separator_and_format_override(tmp_path):
    rows = with_int_labels(make_rows())
    path = write_csv(tmp_path / "train.txt", rows, ["label", "title", "description"], sep="\t")
    dm = TextDataModule(train=str(path), valid=str(path), file_format="tsv", text_columns=["title", "description"],
                        text_separator=" | ")
    dm.setup("fit")
    assert_split_matches(dm, dm.val_dataloader(), rows, sep=" | ")


def test_hub_dataset_with_classlabel_and_carved_validation(tmp_path, monkeypatch):
    rows = make_rows(60)
    hub = datasets.DatasetDict({"train": classlabel_dataset(rows[:45], list(CLASSES)),
                                "test": classlabel_dataset(rows[45:], list(CLASSES))})
    calls = []

    def fake_load_dataset(name, config=None, **kwargs):
        calls.append((name, config))
        return hub

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dm = TextDataModule(hub_dataset="someone/news", hub_config="default", text_columns=["title", "description"],
                        valid_fraction=0.2)
    assert dm.label_names == list(CLASSES) and calls == [("someone/news", "default")]
    dm.setup("fit")
    dm.setup("test")
    train, valid = collect(dm.train_dataloader(), dm.tokenizer), collect(dm.val_dataloader(), dm.tokenizer)
    assert len(train) == 36 and len(valid) == 9
    texts = {t for t, _ in train.values()} | {t for t, _ in valid.values()}
    assert texts == {text(r) for r in rows[:45]}  # validation comes from train, never from test
    assert_split_matches(dm, dm.test_dataloader(), rows[45:])


def test_hub_failure_says_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'ag_news' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match=r"hub is unreachable or the name is wrong.*data\.train=path/to/train\.csv"):
        TextDataModule(hub_dataset="ag_news").num_classes


# ----------------------------------------------------------------------------- validation


def carved(tmp_path, seed: int, **kwargs):
    rows = with_int_labels(make_rows(100))
    train = write_csv(tmp_path / "train.csv", rows, ["label", "title", "description"])
    test_rows = make_rows(12, prefix="test")
    test = write_csv(tmp_path / "test.csv", with_int_labels(test_rows), ["label", "title", "description"])
    dm = TextDataModule(train=str(train), test=str(test), text_columns=["title", "description"], seed=seed,
                        valid_fraction=0.2, **kwargs)
    dm.setup("fit")
    train_seen = collect(dm.train_dataloader(), dm.tokenizer)
    valid_seen = collect(dm.val_dataloader(), dm.tokenizer)
    return rows, test_rows, train_seen, valid_seen


def test_validation_carved_from_train_is_deterministic_disjoint_stratified(tmp_path):
    rows, test_rows, train_seen, valid_seen = carved(tmp_path, seed=1)
    train_texts = {t for t, _ in train_seen.values()}
    valid_texts = {t for t, _ in valid_seen.values()}
    assert not train_texts & valid_texts
    assert train_texts | valid_texts == {text(r) for r in rows}
    assert not valid_texts & {text(r) for r in test_rows}
    per_class = sorted(sum(1 for _, lab in valid_seen.values() if lab == c) for c in range(3))
    assert per_class == [7, 7, 7]  # round(0.2 * 33 or 34) per class
    again = carved(tmp_path, seed=1)[3]
    assert {t for t, _ in again.values()} == valid_texts
    other = carved(tmp_path, seed=2)[3]
    assert {t for t, _ in other.values()} != valid_texts


def test_no_validation_when_fraction_is_zero(tmp_path):
    rows = with_int_labels(make_rows())
    train = write_csv(tmp_path / "train.csv", rows, ["label", "title", "description"])
    dm = TextDataModule(train=str(train), text_columns=["title", "description"], valid_fraction=0.0)
    dm.setup("fit")
    assert dm.val_dataloader() == []
    assert len(collect(dm.train_dataloader(), dm.tokenizer)) == 30


def test_validation_on_the_test_file_is_refused(tmp_path):
    path = write_csv(tmp_path / "data.csv", with_int_labels(make_rows()), ["label", "title", "description"])
    dm = TextDataModule(train=str(path), valid=str(path), test=str(path), text_columns=["title", "description"])
    with pytest.raises(ValueError, match="data.valid and data.test are the same"):
        dm.num_classes


# ----------------------------------------------------------------------------- batches


def test_batch_format_and_bucket_padding(tmp_path):
    rows = with_int_labels(make_rows(50))
    path = write_csv(tmp_path / "train.csv", rows, ["label", "title", "description"])
    dm = TextDataModule(train=str(path), valid=str(path), text_columns=["title", "description"], batch_size=8,
                        pad_multiple=8, max_length=30)
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for batch in loader:
            assert set(batch) == {"input_ids", "lengths", "labels", "index"}
            assert all(v.dtype == torch.long for v in batch.values())
            ids, lens = batch["input_ids"], batch["lengths"]
            assert ids.shape[1] % 8 == 0 and ids.shape[1] - 8 < int(lens.max()) <= ids.shape[1]
            assert int(lens.max()) <= 30
            positions = torch.arange(ids.shape[1])
            assert bool((ids[positions >= lens[:, None]] == PAD_ID).all())
            assert bool((ids[positions < lens[:, None]] != PAD_ID).all())
    lengths = [len(encode(dm.tokenizer, [text(r)], 10_000)[0]) for r in rows]
    assert any(n > 30 for n in lengths)  # some rows really were truncated


def test_fixed_batching_pads_to_max_length(tmp_path):
    path = write_csv(tmp_path / "train.csv", with_int_labels(make_rows()), ["label", "title", "description"])
    dm = TextDataModule(train=str(path), valid=str(path), text_columns=["title", "description"], batching="fixed",
                        max_length=100, batch_size=8)
    dm.setup("fit")
    shapes = {tuple(b["input_ids"].shape[1:]) for b in dm.train_dataloader()}
    assert shapes == {(100,)}


def test_in_memory_texts_reuse_the_same_encoding_and_padding(tmp_path):
    rows = make_rows(20)
    path = tmp_path / "predict.jsonl"
    path.write_text("".join(json.dumps({"text": text(r)}) + "\n" for r in rows))
    train = write_csv(tmp_path / "train.csv", [{"text": text(r), "label": r["label"]} for r in rows], ["text", "label"])
    dm = TextDataModule(train=str(train), predict=str(path), eval_batch_size=6)
    dm.setup("predict")
    from_file = {int(i): (b["input_ids"][k].tolist(), int(b["labels"][k])) for b in dm.predict_dataloader()
                 for k, i in enumerate(b["index"])}
    texts = [text(r) for r in rows]
    for batches in (list(dm.texts_dataloader(texts)), list(texts_to_batches(dm.tokenizer, texts, batch_size=6))):
        from_memory = {int(i): (b["input_ids"][k].tolist(), int(b["labels"][k])) for b in batches
                       for k, i in enumerate(b["index"])}
        assert from_memory == from_file
    assert {label for _, label in from_file.values()} == {-1}  # no label column in predict data


@pytest.mark.parametrize("header", [None, ["title", "description"], ["label", "title", "description"]],
                         ids=["header-less", "header without the label", "header equal to column_names"])
def test_predict_csv_with_or_without_a_header_when_column_names_is_set(tmp_path, header):
    """data.column_names describes the header-less training files; a predict file may have a header."""
    rows = with_int_labels(make_rows(12), offset=1)
    train = write_csv(tmp_path / "train.csv", rows, ["label", "title", "description"], header=False)
    columns = header or ["title", "description"]
    predict = write_csv(tmp_path / "predict.csv", rows, columns, header=header is not None)
    dm = TextDataModule(train=str(train), predict=str(predict), column_names=["label", "title", "description"],
                        text_columns=["title", "description"], label_offset=1)
    dm.setup("predict")
    seen = collect(dm.predict_dataloader(), dm.tokenizer)
    assert sorted(seen) == list(range(len(rows)))  # the header is never predicted as a text
    assert [seen[i][0] for i in range(len(rows))] == [text(r) for r in rows]


# ----------------------------------------------------------------------------- linked attributes


def test_linked_attributes_are_ready_after_construction(tmp_path):
    rows = with_int_labels(make_rows())
    path = write_csv(tmp_path / "train.csv", rows, ["label", "title", "description"])
    dm = TextDataModule(train=str(path), text_columns=["title", "description"])
    assert (dm.num_classes, dm.vocab_size, dm.padding_idx, dm.label_names) == (3, 72, 0, ["0", "1", "2"])
    tokenizer = dm.tokenizer
    dm.setup("fit")
    assert dm.tokenizer is tokenizer  # computed once, reused by setup


def test_learned_tokenizer_on_chinese(tmp_path):
    train = [{"text": t, "label": lab} for t, lab in
             [("体育新闻中国队获胜", "体育"), ("财经新闻股市上涨", "财经"), ("体育比赛", "体育"), ("财经股市", "财经")]]
    path = write_csv(tmp_path / "train.tsv", train, ["text", "label"], sep="\t")
    test = write_csv(tmp_path / "test.tsv", [{"text": "中国足球", "label": "体育"}], ["text", "label"], sep="\t")
    dm = TextDataModule(train=str(path), valid=str(path), test=str(test), tokenizer="learned")
    assert dm.label_names == ["体育", "财经"]
    assert dm.vocab_size == 2 + len(set("".join(r["text"] for r in train)))
    dm.setup("test")
    (batch,) = list(dm.test_dataloader())
    vocab = dm.tokenizer.get_vocab()
    assert batch["input_ids"][0, :4].tolist() == [vocab["中"], vocab["国"], UNK_ID, UNK_ID]


def test_tokenizer_from_a_saved_file(tmp_path):
    rows = make_rows()
    path = write_csv(tmp_path / "train.csv", [{"text": text(r), "label": r["label"]} for r in rows], ["text", "label"])
    learned = TextDataModule(train=str(path), tokenizer="learned", lowercase=True)
    learned.tokenizer.save(str(tmp_path / "tokenizer.json"))
    reused = TextDataModule(train=str(path), tokenizer=str(tmp_path / "tokenizer.json"))
    assert reused.tokenizer.to_str() == learned.tokenizer.to_str()


def test_state_dict_restores_vocabulary_without_training_data(tmp_path):
    """The checkpoint's data state is the tokenizer; the label names come from the model's hparams."""
    rows = make_rows()
    path = write_csv(tmp_path / "train.csv", [{"text": text(r), "label": r["label"]} for r in rows], ["text", "label"])
    trained = TextDataModule(train=str(path), tokenizer="learned")
    state = trained.state_dict()
    assert set(state) == {"tokenizer"}
    fresh = TextDataModule(test=str(path), tokenizer="byte")
    fresh.load_state_dict(state)
    assert fresh.tokenizer.to_str() == trained.tokenizer.to_str()
    fresh.set_vocabulary(fresh.tokenizer, trained.label_names)
    assert fresh.label_names == list(CLASSES)
    fresh.setup("test")
    seen = collect(fresh.test_dataloader(), fresh.tokenizer)
    assert all(fresh.label_names[lab] == rows[i]["label"] for i, (_, lab) in seen.items())


# ----------------------------------------------------------------------------- DDP


def attach(dm: TextDataModule, world_size: int, rank: int, use_distributed_sampler: bool = False):
    dm.trainer = SimpleNamespace(
        world_size=world_size,
        global_rank=rank,
        _accelerator_connector=SimpleNamespace(use_distributed_sampler=use_distributed_sampler),
    )


def test_ddp_ranks_get_disjoint_equal_length_shards(tmp_path):
    rows = with_int_labels(make_rows(61))
    path = write_csv(tmp_path / "train.csv", rows, ["label", "title", "description"])
    loaders = {}
    for rank in (0, 1):
        dm = TextDataModule(train=str(path), valid=str(path), text_columns=["title", "description"], batch_size=8)
        dm.setup("fit")
        attach(dm, 2, rank)
        loaders[rank] = (dm.train_dataloader(), dm.val_dataloader(), dm)
    for which in (0, 1):
        shards = [collect(loaders[r][which], loaders[r][2].tokenizer) for r in (0, 1)]
        assert len(loaders[0][which]) == len(loaders[1][which])
        assert not set(shards[0]) & set(shards[1])
        assert sorted([*shards[0], *shards[1]]) == list(range(61))


def test_overfit_batches_turns_shuffling_off(tmp_path):
    path = write_csv(tmp_path / "train.csv", with_int_labels(make_rows()), ["label", "title", "description"])
    dm = TextDataModule(train=str(path), text_columns=["title", "description"], batch_size=4)
    attach(dm, 1, 0)
    dm.trainer.overfit_batches = 2
    loader = dm.train_dataloader()
    first = list(loader.batch_sampler)
    loader.batch_sampler.set_epoch(1)
    assert list(loader.batch_sampler) == first


def test_ddp_with_lightning_distributed_sampler_is_refused(tmp_path):
    path = write_csv(tmp_path / "train.csv", with_int_labels(make_rows()), ["label", "title", "description"])
    dm = TextDataModule(train=str(path), text_columns=["title", "description"])
    attach(dm, 2, 0, use_distributed_sampler=True)
    with pytest.raises(ValueError, match="use_distributed_sampler=false"):
        dm.train_dataloader()


# ----------------------------------------------------------------------------- user errors


def header_csv(tmp_path, rows, name="train.csv"):
    return str(write_csv(tmp_path / name, rows, ["label", "title", "description"]))


def test_error_nonexistent_path_names_the_argument(tmp_path):
    train = header_csv(tmp_path, with_int_labels(make_rows()))
    with pytest.raises(FileNotFoundError, match=r"data\.test: file not found"):
        TextDataModule(train=train, test=str(tmp_path / "nope.csv"), text_columns=["title"]).setup("test")
    with pytest.raises(FileNotFoundError, match=r"data\.train: no file matches the glob"):
        TextDataModule(train=str(tmp_path / "x*.csv")).num_classes


def test_error_unsupported_extension_lists_formats(tmp_path):
    (tmp_path / "train.xlsx").write_text("x")
    with pytest.raises(ValueError, match=r"\.csv.*\.parquet.*data\.file_format"):
        TextDataModule(train=str(tmp_path / "train.xlsx")).num_classes


def test_error_missing_columns_lists_the_existing_ones(tmp_path):
    train = header_csv(tmp_path, with_int_labels(make_rows()))
    with pytest.raises(ValueError, match=r"data\.text_columns: no column 'text'.*label, title, description"):
        TextDataModule(train=train).num_classes
    with pytest.raises(ValueError, match=r"data\.label_column: no column 'class'.*label, title, description"):
        TextDataModule(train=train, text_columns=["title"], label_column="class").num_classes
    headerless = write_csv(tmp_path / "h.csv", with_int_labels(make_rows()), ["label", "title", "description"], header=False)
    with pytest.raises(ValueError, match="data.column_names"):
        TextDataModule(train=str(headerless), text_columns=["title"]).num_classes


def test_error_label_unseen_in_training(tmp_path):
    rows = make_rows()
    train = header_csv(tmp_path, rows)
    odd = header_csv(tmp_path, make_rows(6, classes=("sport", "weather")), "odd.csv")
    dm = TextDataModule(train=train, valid=odd, text_columns=["title"])
    with pytest.raises(ValueError, match="label 'weather' in the valid split never occurs in the training split"):
        dm.setup("fit")
    dm = TextDataModule(train=train, test=odd, text_columns=["title"])
    with pytest.raises(ValueError, match="label 'weather' in the test split never occurs"):
        dm.setup("test")


def test_error_int_labels_outside_the_classes(tmp_path):
    train = header_csv(tmp_path, with_int_labels(make_rows()))
    test = header_csv(tmp_path, [{"title": "x", "description": "y", "label": 7}], "test.csv")
    dm = TextDataModule(train=train, test=test, text_columns=["title"])
    with pytest.raises(ValueError, match="label '7' in the test split is outside the 3 classes"):
        dm.setup("test")
    gaps = header_csv(tmp_path, [{"title": "x", "description": "y", "label": i} for i in (0, 2, 0, 2)], "gaps.csv")
    with pytest.raises(ValueError, match=r"0\.\.K-1.*without \[1\]"):
        TextDataModule(train=gaps, text_columns=["title"]).num_classes
    one_based = header_csv(tmp_path, with_int_labels(make_rows(), offset=1), "one.csv")
    with pytest.raises(ValueError, match="label_offset"):
        TextDataModule(train=one_based, text_columns=["title"], label_offset=2).num_classes


def test_error_single_class_training_split(tmp_path):
    train = header_csv(tmp_path, make_rows(10, classes=("sport",)))
    with pytest.raises(ValueError, match="single class \\('sport'\\)"):
        TextDataModule(train=train, text_columns=["title"]).num_classes


def test_error_empty_split(tmp_path):
    train = header_csv(tmp_path, make_rows())
    empty = header_csv(tmp_path, [], "empty.csv")
    with pytest.raises(ValueError, match=r"the test split \(data\.test=.*empty\.csv'\) has no rows"):
        TextDataModule(train=train, test=empty, text_columns=["title"]).setup("test")


def test_error_label_outside_classes_file_and_untrained_class_warning(tmp_path):
    (tmp_path / "classes.txt").write_text("sport\ntech\nworld\nweather\n")
    classes = str(tmp_path / "classes.txt")
    bad = header_csv(tmp_path, make_rows(6, classes=("sport", "snow")), "bad.csv")
    with pytest.raises(ValueError, match=r"label 'snow' in the train split is none of the 4 classes of data\.classes_file"):
        TextDataModule(train=bad, text_columns=["title"], classes_file=classes).num_classes
    train = header_csv(tmp_path, make_rows())
    test = header_csv(tmp_path, make_rows(4, classes=("weather", "sport")), "test.csv")
    dm = TextDataModule(train=train, test=test, text_columns=["title"], classes_file=classes)
    assert dm.num_classes == 4
    with pytest.warns(UserWarning, match="no training example: weather"):
        dm.setup("test")


def test_error_tokenizer_setting(tmp_path):
    test = header_csv(tmp_path, make_rows(), "test.csv")
    with pytest.raises(ValueError, match="learned from the training split.*data.tokenizer=path/to/tokenizer.json"):
        TextDataModule(test=test, text_columns=["title"], tokenizer="learned").vocab_size
    with pytest.raises(ValueError, match="neither a kind \\(char, learned, byte\\) nor an existing tokenizer.json"):
        TextDataModule(test=test, text_columns=["title"], tokenizer="words").vocab_size
    with pytest.raises(ValueError, match="label names are unknown without a training split"):
        TextDataModule(test=test, text_columns=["title"]).num_classes


def test_error_hub_without_the_train_split(monkeypatch):
    rows = make_rows()
    hub = datasets.DatasetDict({"training": classlabel_dataset(rows, list(CLASSES))})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: hub)
    with pytest.raises(ValueError, match="has no split 'train' \\(it has training\\); set data.hub_splits"):
        TextDataModule(hub_dataset="x", text_columns=["title"]).num_classes
    dm = TextDataModule(hub_dataset="x", hub_splits={"train": "training"}, text_columns=["title"])
    assert dm.label_names == list(CLASSES)


def test_error_missing_test_split(tmp_path):
    dm = TextDataModule(train=header_csv(tmp_path, make_rows()), text_columns=["title"])
    with pytest.raises(ValueError, match=r"no test split: set data\.test="):
        dm.test_dataloader()


# ----------------------------------------------------------------------------- bundled data and Lightning


SAMPLE_CONFIG = dict(
    train=str(SAMPLE / "train.csv"),
    valid=str(SAMPLE / "valid.csv"),
    test=str(SAMPLE / "test.csv"),
    column_names=["label", "title", "description"],
    text_columns=["title", "description"],
    label_offset=1,
    classes_file=str(SAMPLE / "classes.txt"),
)


def test_bundled_ag_news_sample():
    dm = TextDataModule(**SAMPLE_CONFIG, batch_size=256)
    assert dm.label_names == ["World", "Sports", "Business", "Sci/Tech"]
    dm.setup("fit")
    dm.setup("test")
    for loader, per_class in ((dm.train_dataloader(), 1000), (dm.val_dataloader(), 100), (dm.test_dataloader(), 200)):
        labels = torch.cat([b["labels"] for b in loader])
        assert torch.bincount(labels).tolist() == [per_class] * 4
    assert sum(f.stat().st_size for f in SAMPLE.iterdir()) < 2_000_000


class _Tiny(torch.nn.Module):
    def __init__(self, vocab_size: int, num_classes: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, 8, padding_idx=0)
        self.fc = torch.nn.Linear(8, num_classes)

    def forward(self, input_ids):
        return self.fc(self.emb(input_ids).mean(1))


def test_lightning_trainer_accepts_every_dataloader(tmp_path):
    import pytorch_lightning as pl

    class Module(pl.LightningModule):
        def __init__(self, dm):
            super().__init__()
            self.net = _Tiny(dm.vocab_size, dm.num_classes)

        def training_step(self, batch, _):
            return torch.nn.functional.cross_entropy(self.net(batch["input_ids"]), batch["labels"])

        def validation_step(self, batch, _):
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(batch["input_ids"]), batch["labels"]))

        test_step = validation_step

        def predict_step(self, batch, _):
            return batch["index"]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    rows = with_int_labels(make_rows(40))
    path = header_csv(tmp_path, rows)
    dm = TextDataModule(train=path, test=path, predict=path, text_columns=["title", "description"], batch_size=8)
    module = Module(dm)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, dm)
    assert trainer.train_dataloader.batch_sampler.sampler.epoch == 1  # Lightning reached set_epoch
    trainer.test(module, dm)
    predicted = torch.cat(trainer.predict(module, dm))
    assert sorted(predicted.tolist()) == list(range(40))


@pytest.mark.slow
def test_real_ddp_shards_every_split(tmp_path):
    """Lightning 2.6 with use_distributed_sampler=False: each rank gets a disjoint shard, same step count."""
    import os
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "fixtures" / "ddp_shards.py"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    sizes = {"train": 300, "val": 100, "test": 400, "predict": 400}
    for split, n in sizes.items():
        groups = [(0,)] if split in ("test", "predict") else [(0,), (1,)]
        for (epoch,) in groups:
            per_rank = []
            for r in (0, 1):
                batches = seen[r][split] if split in ("test", "predict") else [b for e, b in seen[r][split] if e == epoch]
                per_rank.append(batches)
            if split != "predict":  # predict has no collectives, uneven counts are fine there
                assert len(per_rank[0]) == len(per_rank[1]) > 0
            rows = [[i for b in batches for i in b] for batches in per_rank]
            assert not set(rows[0]) & set(rows[1]), split
            assert sorted(rows[0] + rows[1]) == list(range(n)), split
    train_orders = [[i for e, b in seen[0]["train"] if e == epoch for i in b] for epoch in (0, 1)]
    assert train_orders[0] != train_orders[1]  # reshuffled between epochs
