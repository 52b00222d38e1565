"""The vdcnn-res command on the bundled sample: every subcommand, configs, errors, bf16."""

import re
from pathlib import Path

import pytest
import torch

import yaml

from fixtures.tiny import TINY  # a tiny network on the bundled sample: the CLI path, not accuracy
from vdcnn_res.cli import main
from vdcnn_res.model.config import VARIANTS

from fixtures.tiny import REPO  # noqa: E402
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
PAPER_RECIPE = REPO / "configs" / "paper" / "recipe.yaml"
SERIES_RECIPE = REPO / "configs" / "series" / "recipe.yaml"

SHORT = ["--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2",
         "--trainer.limit_predict_batches=2", "--trainer.enable_progress_bar=false"]


pytestmark = pytest.mark.usefixtures("in_repo")


def run(*args: str) -> None:
    main([str(a) for a in args])


def _config_args(config: Path) -> list[Path | str]:
    """Paper dataset files compose with the paper recipe; overlays go on the quick start."""
    if config == PAPER_RECIPE:
        return ["--config", config, "--config", config.parent / "ag_news.yaml"]
    if config.parent == PAPER_RECIPE.parent:
        return ["--config", PAPER_RECIPE, "--config", config]
    if config == SERIES_RECIPE:  # the recipe holds no data set: compose it with one
        return ["--config", config, "--config", config.parent / "GunPoint.yaml"]
    if config.name == "gpu_ddp.yaml" or config.parent.name == "text":  # overlays without data
        return ["--config", REPO / "configs" / "quickstart.yaml", "--config", config]
    return ["--config", config]


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(REPO / "configs")) for c in CONFIGS])
def test_every_config_parses(config, capsys):
    """Unknown keys, wrong types and bad choices in any shipped config fail here."""
    with pytest.raises(SystemExit) as exit_:
        run("fit", *_config_args(config), "--print_config")
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["train"] or printed["data"]["hub_dataset"], "no training data named"
    assert printed["model"]["arch"]["depth"] in VARIANTS
    # The text recipe adds the n-gram bag; the paper, the ablation and series models are the CNN alone.
    pure = config.parent.name in ("paper", "ablation", "series")
    assert printed["model"]["arch"]["ngram_orders"] == ([] if pure else [1, 2, 3, 4, 5])


@pytest.mark.parametrize(
    "extra, branch_loss, input_dropout",
    [
        ([], {"sum": 0.0, "cnn": 1.0, "ngrams": 1.0}, 0.0),
        (["--model.branch_loss={sum: 0, cnn: 1, ngrams: 1, distill: 0.5}", "--model.arch.input_dropout=0.1"],
         {"sum": 0.0, "cnn": 1.0, "ngrams": 1.0, "distill": 0.5}, 0.1),
    ],
    ids=["as-shipped", "distill-input-dropout"],
)
def test_the_apart_overlay_trains_both_branches_on_their_own_losses_and_fuses_them(
    tmp_path, capsys, extra, branch_loss, input_dropout
):
    """configs/text/apart.yaml: the sum's loss off, each branch on its own loss, the CNN reading input
    n-grams (with the bag as its teacher, and token dropout, when asked); the checkpoint keeps the
    setting and test reports each branch alone."""
    overlay = REPO / "configs" / "text" / "apart.yaml"
    run("fit", *TINY, "--config", overlay, *SHORT, "--trainer.max_epochs=1", "--trainer.default_root_dir", tmp_path,
        "--model.arch.input_ngram_buckets=512", *extra)  # fmt: skip
    ckpt = next((tmp_path / "lightning_logs").rglob("best-*.ckpt"))
    hparams = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hparams["branch_loss"] == branch_loss
    assert list(hparams["arch"]["input_ngram_orders"]) == [2, 3, 4, 5]
    assert hparams["arch"]["head_norm"] == "none"
    assert hparams["arch"]["input_dropout"] == input_dropout
    capsys.readouterr()
    run("test", "--ckpt_path", ckpt, "--data.test", REPO / "data" / "ag_news_sample" / "test.csv", *SHORT)
    out = capsys.readouterr().out
    assert re.search(r"Each branch alone \(the other's weight 0\): CNN [\d.]+ %, n-gram bag [\d.]+ %", out), out[-800:]


def test_configs_do_not_type_derived_values():
    for config in CONFIGS:
        text = config.read_text()
        for derived in ("num_classes:", "vocab_size:", "padding_idx:", "label_names:"):
            assert derived not in text, f"{config.name} types {derived} instead of linking it"


def test_fit_without_a_monitored_metric_ends_with_its_checkpoint(tmp_path, capsys):
    """`--checkpoint.monitor=null` keeps the newest checkpoint; the end of fit names it, no crash."""
    run("fit", *TINY, *SHORT, "--trainer.default_root_dir", tmp_path, "--trainer.max_epochs=1", "--checkpoint.monitor=null")
    out = capsys.readouterr().out
    assert "Best checkpoint (" not in out
    assert re.search(r"Last checkpoint: \S+\.ckpt", out), out[-500:]


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], {"ngrams": 1.0}),  # the text recipe: the bag also learns on its own loss
        (["--model.branch_loss={ngrams: 0}"], {"ngrams": 0}),  # turned off, kept as written
        (["--model.arch.ngram_orders=[]"], None),  # the pure CNN has no bag to weigh
        (["--model.branch_loss={cnn: 0.5, ngrams: 2}"], {"cnn": 0.5, "ngrams": 2}),
    ],
)
def test_fit_defaults_branch_loss_only_for_a_model_with_the_bag(tmp_path, args, expected):
    run("fit", *TINY, *SHORT, "--trainer.default_root_dir", tmp_path, "--trainer.max_steps=1", *args)
    saved = yaml.safe_load((tmp_path / "lightning_logs" / "version_0" / "config.yaml").read_text())
    assert saved["model"]["branch_loss"] == expected
    hparams = torch.load(next((tmp_path / "lightning_logs").rglob("last.ckpt")), weights_only=True)["hyper_parameters"]
    assert hparams.get("branch_loss") == ({k: float(v) for k, v in expected.items() if v} or None if expected else None)


def test_the_cells_of_sweep_ablate_and_tune_get_fits_branch_loss_default():
    """Their fits are built without a subcommand (build_cli(run=False)): the text default still applies."""
    from vdcnn_res.cli.lightning import TEXT_BRANCH_LOSS, build_cli

    for extra, expected in (([], TEXT_BRANCH_LOSS), (["--model.arch.ngram_orders=[]"], None)):
        cli = build_cli([*TINY, *SHORT, "--trainer.logger=false", *extra], run=False)
        assert cli.model.hparams.get("branch_loss") == expected


def test_fits_started_together_in_one_folder_get_their_own_runs(tmp_path, monkeypatch):
    """Two fit loggers built before either has written anything (two fits started at the same moment):
    Lightning's count of the existing folders would give both version_0; the reservation does not."""
    from vdcnn_res.cli.lightning import _fit_logger

    for key in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "lightning_logs" / "version_4").mkdir(parents=True)  # an earlier run
    first, second = (_fit_logger({"default_root_dir": str(tmp_path)}) for _ in range(2))
    assert (first.version, second.version) == (5, 6)
    assert Path(first.log_dir) == tmp_path / "lightning_logs" / "version_5" and Path(first.log_dir).is_dir()
    run("fit", *TINY, *SHORT, "--trainer.default_root_dir", tmp_path, "--trainer.max_steps=1")
    assert (tmp_path / "lightning_logs" / "version_7" / "config.yaml").is_file()


@pytest.mark.slow
def test_fit_validate_test_predict_and_resume(tmp_path, capsys):
    root = ["--trainer.default_root_dir", tmp_path]
    run("fit", *TINY, *SHORT, *root, "--trainer.max_epochs=1")
    version = tmp_path / "lightning_logs" / "version_0"
    assert (version / "config.yaml").exists()
    ckpts = version / "checkpoints"
    last = ckpts / "last.ckpt"
    assert last.exists() and len(list(ckpts.glob("best-*.ckpt"))) == 1
    assert "Best checkpoint (val/acc=" in capsys.readouterr().out

    run("validate", *TINY, *SHORT, *root, "--ckpt_path", last)
    run("test", *TINY, *SHORT, *root, "--ckpt_path", last)
    out = capsys.readouterr().out
    assert "Test error:" in out and "on 32 texts" in out
    assert (version / "test" / "last" / "confusion_matrix_test.png").is_file()  # beside the checkpoint's run
    run("predict", *TINY, *SHORT, *root, "--ckpt_path", last, "--data.predict", "data/ag_news_sample/test.csv")

    # Resume: a second epoch continues from the saved step count.
    steps_before = torch.load(last, weights_only=True)["global_step"]
    run("fit", *TINY, *SHORT, *root, "--trainer.max_epochs=2", "--ckpt_path", last)
    resumed = tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"  # validate/test/predict add none
    assert torch.load(resumed, weights_only=True)["global_step"] == steps_before + 3


@pytest.mark.slow
def test_bf16_mixed_on_cpu(tmp_path):
    run("fit", *TINY, *SHORT, "--trainer.default_root_dir", tmp_path, "--trainer.max_epochs=1",
        "--trainer.precision=bf16-mixed")
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize(
    "args, words",
    [
        (["--data.train", "no/such/train.csv"], "no/such/train.csv"),
        (["--model.arch.depth=10"], "depth"),
        (["--model.optim.lr=-1"], "optim.lr"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(args, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run("fit", *TINY, *SHORT, "--trainer.default_root_dir", tmp_path, *args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vdcnn-res: error:") and words in err[-1]
    assert not any(line.startswith("Traceback") for line in err)


@pytest.mark.slow
def test_early_stopping_from_the_command_line(tmp_path):
    """The default early stopping is tuned with early_stopping.* (threshold 0: after the first validation)."""
    run("fit", *TINY, *SHORT, "--trainer.default_root_dir", tmp_path, "--trainer.max_epochs=5",
        "--early_stopping.stopping_threshold=0.0")
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0


def test_the_packages_own_warnings_print_as_one_line(capsys):
    from pathlib import Path

    import vdcnn_res.data.labels as labels
    from vdcnn_res.cli import _show_warning

    _show_warning(UserWarning("the train split has 1 label(s) with surrounding whitespace"), UserWarning,
                  labels.__file__, 1)
    _show_warning(UserWarning("foreign"), UserWarning, str(Path(pytest.__file__)), 7)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "vdcnn-res: warning: the train split has 1 label(s) with surrounding whitespace"
    assert "pytest" in err[1] and "UserWarning: foreign" in err[1]  # other packages' warnings keep their form


@pytest.mark.parametrize("which", ["tiny", "legacy_0_1_0"])
def test_test_takes_the_architecture_from_the_checkpoint(which, ckpt, tmp_path, capsys):
    """No model flags: the network's shape (the tiny widths; no n-gram bag in a 0.1.0 checkpoint,
    though fit's text default has one now) comes from the checkpoint, not from fit's defaults."""
    path = ckpt if which == "tiny" else REPO / "tests" / "fixtures" / "legacy_0_1_0" / "tiny.ckpt"
    copy = tmp_path / "model.ckpt"
    copy.write_bytes(Path(path).read_bytes())
    run("test", "--ckpt_path", copy, "--data.test", "data/ag_news_sample/test.csv", "--trainer.limit_test_batches=1",
        "--trainer.enable_progress_bar=false")
    assert "Test error:" in capsys.readouterr().out
