"""What `vdcnn-res --help` and `vdcnn-res fit|test --help` tell a user (issue 38, points 2 and 3)."""

from __future__ import annotations

import re

import pytest

from vdcnn_res.cli import COMMANDS, SUBCOMMANDS, main


def _help(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    assert exit_.value.code == 0
    return capsys.readouterr().out


def _entries(text: str) -> dict[str, str]:
    """Option -> its description, as printed: `  --key METAVAR` then the indented lines after it."""
    entries: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        found = re.match(r"  (--[\w.]+)", line)
        if found:
            key = found.group(1)
            entries[key] = line[24:].strip() if len(line) > 24 and line[22:24] == "  " else ""
        elif key and line.startswith(" " * 24):
            entries[key] += " " + line.strip()
        elif not line.strip() or not line.startswith(" "):
            key = None
    return {k: v.strip() for k, v in entries.items()}


def _titles(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]


def test_the_overview_lists_every_subcommand_on_one_line(capsys):
    out = _help(capsys, "--help")
    listed = re.findall(r"^  (\w+) +(.+)$", out, flags=re.M)
    assert [name for name, _ in listed] == list(COMMANDS)
    assert set(COMMANDS) == set(SUBCOMMANDS) | {"fit", "validate", "test", "predict"}
    for name, what in listed:
        assert len(what) > 20 and not what.endswith((",", " the", " your")), (name, what)
    with pytest.raises(SystemExit) as exit_:  # no subcommand at all: the same list, on stderr, status 2
        main([])
    assert exit_.value.code == 2 and "calibrate" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_listed_subcommand_has_its_own_help(name, capsys):
    assert "usage:" in _help(capsys, name, "--help")


def test_fit_help_is_the_toolkits_options_first_each_with_a_meaning(capsys):
    out = _help(capsys, "fit", "--help")
    assert len(out.splitlines()) < 450, len(out.splitlines())  # Lightning's full text was 987 lines
    titles = _titles(out)
    trainer = next(i for i, t in enumerate(titles) if t.startswith("Lightning Trainer"))
    for group in ("Data (text", "Model:", "Network (model.arch.*)", "Optimizer", "Checkpoints", "Early stopping"):
        assert any(t.startswith(group) for t in titles[:trainer]), (group, titles)
    assert "`vdcnn-res fit --help_all`" in titles[trainer]  # where the rest of the Trainer's options are
    assert "`vdcnn-res fit --data_kind series --help`" in out  # where the series options are
    for title in titles:  # no section title cut off mid-sentence
        assert not title.endswith((" validation:", ", the:", " and:")), title
    entries = _entries(out)
    for key in ("--model.arch.depth", "--model.branch_loss", "--model.arch.head_norm", "--model.arch.ngram_orders",
                "--model.arch.ngram_buckets", "--data.seed", "--data.valid_fraction", "--checkpoint.dirpath"):
        assert key in entries, key
    for key, text in entries.items():
        meaning = re.sub(r"\(default: .*\)$", "", text).strip()
        assert re.search(r"[a-z]{3}", meaning), f"{key} has no description: {text!r}"
        assert "default: )" not in text and not text.endswith("default:"), (key, text)
    # The real defaults, and none of Lightning's text that contradicts them.
    assert entries["--trainer.max_epochs"].endswith("(default: 20)")
    assert entries["--trainer.log_every_n_steps"].endswith("(default: 10)")
    assert "bf16-mixed where the device computes bf16 natively" in entries["--trainer.precision"]
    assert entries["--data.text_separator"].endswith('(default: " ")')
    assert "last" in entries["--ckpt_path"] and "hpc" not in entries["--ckpt_path"]
    for lightning in ("Disabled by default", "Default: ``50``", "Default: ``'32-true'``", "do not save anything to disk",
                      "max_epochs = 1000", "lacks type and help"):
        assert lightning not in out, lightning


def test_help_all_lists_every_trainer_option_still_with_the_real_defaults(capsys):
    short = _entries(_help(capsys, "fit", "--help"))
    full = _help(capsys, "fit", "--help_all")
    entries = _entries(full)
    for key in ("--trainer.barebones", "--trainer.profiler", "--checkpoint.every_n_train_steps"):
        assert key in entries and key not in short, key
    assert entries["--trainer.max_epochs"].startswith("the cap of the adaptive budget")
    assert "Disabled by default (None). If both max_epochs" not in full


def test_series_help_names_its_own_data_and_model(capsys):
    out = _help(capsys, "fit", "--data_kind", "series", "--help")
    titles = _titles(out)
    assert any(t.startswith("Data (time series") for t in titles)
    assert any(t.startswith("Model: the residual 1D CNN classifier of time series") for t in titles), titles
    assert "text classifier" not in out
    entries = _entries(out)
    assert "train-eval" in entries["--data.train_as_valid"] and "--data.text_columns" not in entries


def test_test_help_describes_best_and_last_and_its_summary(capsys):
    out = _help(capsys, "test", "--help")
    entries = _entries(out)
    assert "best (the best checkpoint of the newest run" in entries["--ckpt_path"]
    assert entries["--verbose"].endswith("(default: false)")
    assert "--early_stopping" not in entries and "--lr_finder.steps" not in entries  # fit only
    assert "--prediction_writer.top_k" not in entries  # predict only
