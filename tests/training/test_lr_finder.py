"""`lr: auto`: the suggestion rule on synthetic curves, and the range test inside a real (tiny) fit."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fixtures.tiny import QUIET, TINY
from pytorch_lightning.tuner.lr_finder import _LRCallback

from vdcnn_res.errors import UserError
from vdcnn_res.training.lr_finder import MIN_STEPS, PLOT_FILE, LRRangeTest, raw_losses, suggest_lr
from vdcnn_res.training.optim import DEFAULT_LR

LRS = np.geomspace(1e-6, 1.0, 100)  # the default test: 100 steps, 1e-6 -> 1


def valley(lrs: np.ndarray, best: float, diverge: float, start: float = 1.4, floor: float = 0.6) -> np.ndarray:
    """A textbook range-test curve: flat at tiny lrs, falling to `floor` near `best`, blowing up past `diverge`."""
    t = np.log10(lrs)
    fall = (start - floor) / (1 + np.exp(-4 * (t - np.log10(best) + 1)))
    blow = np.where(lrs > diverge, 3.0 * (t - np.log10(diverge)) ** 2 * 10, 0.0)
    return start - fall + blow


def test_clean_valley_gives_minimum_over_ten():
    losses = valley(LRS, best=1e-2, diverge=3e-2)
    s = suggest_lr(LRS, losses)
    i = int(np.argmin(losses))
    assert LRS[i] / 2 < s.lr_at_index <= LRS[i]  # smoothing moves it at most a little, and only downwards
    assert s.lr == pytest.approx(s.lr_at_index / 10)
    assert "minimum" in s.reason


def test_noisy_curve_is_stable():
    clean = suggest_lr(LRS, valley(LRS, best=1e-2, diverge=3e-2)).lr
    ours = []
    for seed in range(10):
        noisy = valley(LRS, best=1e-2, diverge=3e-2) + np.random.default_rng(seed).normal(0, 0.15, len(LRS))
        ours.append(suggest_lr(LRS, noisy).lr)
    assert all(clean / 2.5 < lr < clean * 2.5 for lr in ours)
    assert np.log10(max(ours) / min(ours)) < 0.6  # within 0.6 decades over 10 noise draws


def test_noise_spikes_do_not_move_the_choice():
    losses = valley(LRS, best=1e-2, diverge=3e-2)
    spiky = losses.copy()
    spiky[[15, 40, 55]] = [9.0, 0.01, 7.0]  # a bad batch, a lucky one
    assert suggest_lr(LRS, spiky).lr == pytest.approx(suggest_lr(LRS, losses).lr, rel=0.3)


def test_early_divergence_chooses_below_it():
    losses = valley(LRS, best=1e-4, diverge=3e-4)
    losses[LRS > 1e-2] = np.nan  # the loss overflowed: those steps are dropped
    s = suggest_lr(LRS, losses)
    assert s.lr is not None and 1e-5 <= s.lr <= 3e-5
    assert s.lrs.max() < 1e-3  # the curve was cut where it diverged


def test_choice_is_clipped_to_the_sane_range():
    high = suggest_lr(LRS, valley(LRS, best=0.5, diverge=2.0), highest=0.05)
    assert high.lr == 0.05 and "clipped" in high.reason
    low = suggest_lr(LRS, valley(LRS, best=3e-5, diverge=1e-4), lowest=1e-5)
    assert low.lr == 1e-5 and "clipped" in low.reason


def test_flat_noisy_curve_that_rises_uses_the_edge():
    """A deep net from scratch: 100 steps teach it nothing, the noise has a minimum somewhere, then
    the loss climbs. The noise's minimum must not be taken for a valley; the climb's start counts."""
    for seed in range(5):
        noise = np.random.default_rng(seed).normal(0, 0.15, len(LRS))
        losses = 1.5 + noise + np.where(LRS > 8e-4, 30 * np.log10(LRS / 8e-4) ** 2 + 2 * np.log10(LRS / 8e-4), 0.0)
        s = suggest_lr(LRS, losses)
        assert "rose at" in s.reason and 8e-4 / 2 / 2 < s.lr < 8e-4 / 2 * 2


def test_ragged_spikes_mark_the_edge_not_the_final_blow_up():
    """Bursts of bad batches from 5e-4 on (the loss turns ragged) come long before the blow-up at 2e-2."""
    losses = 1.45 + np.random.default_rng(0).normal(0, 0.1, len(LRS))
    ragged = (LRS > 5e-4) & (LRS < 2e-2)
    losses[ragged] += np.abs(np.random.default_rng(1).normal(0, 1.2, ragged.sum()))
    losses[LRS >= 2e-2] = 8.0
    s = suggest_lr(LRS, losses)
    assert 5e-4 / 2 / 2 < s.lr < 5e-4 / 2 * 2


def test_flat_curve_gives_no_suggestion():
    flat = 1.386 + np.random.default_rng(0).normal(0, 0.01, len(LRS))
    s = suggest_lr(LRS, flat)
    assert s.lr is None and "flat" in s.reason


def test_too_few_points_gives_no_suggestion():
    s = suggest_lr(LRS[:10], valley(LRS, 1e-2, 3e-2)[:10])
    assert s.lr is None and str(MIN_STEPS) in s.reason


def test_raw_losses_undo_lightnings_smoothing():
    """Guards the coupling to Lightning's _LRCallback: its EMA factor and bias correction."""
    callback = _LRCallback(num_training=50, early_stop_threshold=None)
    trainer = SimpleNamespace(
        fit_loop=SimpleNamespace(batch_idx=0), accumulate_grad_batches=1, should_stop=False,
        strategy=SimpleNamespace(broadcast=lambda x: x), global_step=0,
    )  # fmt: skip
    raw = np.random.default_rng(0).uniform(0.5, 2.0, 50)
    for i, loss in enumerate(raw):
        trainer.global_step = i + 1
        callback.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss, dtype=torch.float64)}, None, i)
    np.testing.assert_allclose(raw_losses(callback.losses, first_step=1), raw, rtol=1e-9)


@pytest.mark.parametrize(
    "kwargs, words",
    [({"steps": 5}, "steps"), ({"min_lr": 1.0, "max_lr": 0.1}, "min_lr"), ({"lowest": 0.2, "highest": 0.1}, "lowest")],
)
def test_bad_settings_name_the_field(kwargs, words):
    with pytest.raises(UserError, match=words):
        LRRangeTest(**kwargs)


# ---------------------------------------------------------------- in a real fit (tiny model, one thread)


def _fit(root, lr: str, *extra: str, ckpt_path: str | None = None):
    from vdcnn_res.cli.lightning import build_cli

    args = [*TINY, *QUIET, f"--model.optim.lr={lr}", "--trainer.max_epochs=1", "--trainer.limit_train_batches=30",
            "--trainer.limit_val_batches=2", "--trainer.default_root_dir", str(root), *extra]  # fmt: skip
    cli = build_cli(args, run=False)
    found = [c for c in cli.trainer.callbacks if isinstance(c, LRRangeTest)]
    if not found:  # the CLI adds one once cli/lightning.py is wired; tests work either way
        found = [LRRangeTest()]
        cli.trainer.callbacks.append(found[0])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, weights_only=True)
    return cli, found[0]


@pytest.fixture(scope="module")
def auto_fit(tmp_path_factory, one_thread):
    """One `lr: auto` fit of 30 steps (the range test is capped to 29), with what it printed."""
    import contextlib
    import io
    import os

    from fixtures.tiny import REPO

    root, cwd, out = tmp_path_factory.mktemp("auto"), os.getcwd(), io.StringIO()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out):
            cli, finder = _fit(root, "auto")
    finally:
        os.chdir(cwd)
    return cli, finder, root, out.getvalue()


def test_auto_run_equals_a_run_given_the_chosen_lr(auto_fit, tmp_path, in_repo):
    """The range test leaves no trace: same initial weights, data order, RNG and metric states."""
    auto, finder, root, out = auto_fit
    line = [x for x in out.splitlines() if x.startswith("lr auto:")]
    assert len(line) == 1 and "range test 29 steps" in line[0]  # capped below the 30 batches of the epoch
    assert finder.chosen is not None and auto.model.optim.lr == finder.chosen
    assert auto.trainer.optimizers[0].param_groups[0]["initial_lr"] == finder.chosen  # the schedule was rebuilt
    assert next(root.glob(f"**/{PLOT_FILE}")).stat().st_size > 1000
    assert not list(root.glob(".lr_find*"))  # the test's own checkpoint is removed
    fixed, _ = _fit(tmp_path, repr(finder.chosen))
    a, b = auto.model.state_dict(), fixed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert {k: float(v) for k, v in auto.trainer.callback_metrics.items()} == {
        k: float(v) for k, v in fixed.trainer.callback_metrics.items()
    }


def test_same_seed_same_choice_and_checkpoint_records_it(auto_fit, tmp_path, in_repo):
    first, one, _, _ = auto_fit
    _, two = _fit(tmp_path, "auto")
    assert one.chosen == two.chosen
    last = torch.load(first.trainer.checkpoint_callback.last_model_path, weights_only=True)
    assert last["hyper_parameters"]["optim"]["lr"] == one.chosen


def test_resume_takes_the_checkpoints_lr_without_a_new_test(auto_fit, tmp_path, in_repo, capsys):
    first, finder, _, _ = auto_fit
    last = first.trainer.checkpoint_callback.last_model_path
    cli, again = _fit(tmp_path, "auto", "--trainer.max_epochs=2", ckpt_path=last)
    out = capsys.readouterr().out
    assert "no new range test" in out and "range test 29 steps" not in out
    assert again.chosen == finder.chosen and cli.trainer.global_step == 60


def test_tiny_data_skips_the_test_and_says_so(tmp_path, in_repo, one_thread, capsys):
    _, finder = _fit(tmp_path, "auto", "--trainer.limit_train_batches=5")
    out = capsys.readouterr().out
    assert finder.chosen == DEFAULT_LR["adamw"] and "no range test: 5 batches per epoch" in out


def test_non_finite_loss_in_the_test_is_one_clear_line_or_ends_the_test(tmp_path, in_repo, one_thread):
    """A loss that overflows inside the range test: with the module's `in_range_test` flag the test
    stops there and uses the points before; without it the module's divergence stop is reworded."""
    from vdcnn_res.cli.lightning import build_cli

    cli = build_cli([*TINY, *QUIET, "--model.optim.lr=auto", "--trainer.max_epochs=1", "--trainer.limit_train_batches=40",
                     "--trainer.limit_val_batches=2", "--trainer.default_root_dir", str(tmp_path)], run=False)  # fmt: skip
    finder = next((c for c in cli.trainer.callbacks if isinstance(c, LRRangeTest)), None) or LRRangeTest()
    if finder not in cli.trainer.callbacks:
        cli.trainer.callbacks.append(finder)
    calls = []

    def overflow_in_the_test(module, inputs, output):
        calls.append(1)
        return output * float("nan") if len(calls) > 25 and finder._testing else output

    cli.model.model.register_forward_hook(overflow_in_the_test)
    if hasattr(cli.model, "in_range_test"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        assert finder.chosen is not None and cli.trainer.global_step == 40
    else:
        with pytest.raises(UserError, match="range test.*non-finite.*lr_finder.max_lr"):
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def _wired() -> bool:
    import vdcnn_res.cli.lightning as cli_module

    return "LRRangeTest" in vars(cli_module)


@pytest.mark.skipif(not _wired(), reason="cli/lightning.py does not add the lr_finder group yet")
def test_vdcnn_res_fit_with_lr_auto(tmp_path, in_repo, one_thread, capsys):
    from vdcnn_res.cli import main

    main(["fit", *TINY, *QUIET, "--model.optim.lr=auto", "--lr_finder.steps=25", "--trainer.max_epochs=1",
          "--trainer.limit_train_batches=30", "--trainer.limit_val_batches=2", "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    printed = capsys.readouterr()
    line = [x for x in printed.out.splitlines() if x.startswith("lr auto:")]
    assert len(line) == 1 and "range test 25 steps" in line[0] and PLOT_FILE in line[0]
    assert "Finding best initial lr" not in printed.err  # no tqdm bar of the range test's own without a progress bar


def test_without_the_callback_auto_is_refused():
    from vdcnn_res.training.optim import OptimConfig, build_optimizer

    with pytest.raises(UserError, match="range test"):
        build_optimizer(torch.nn.Linear(2, 2), OptimConfig(lr="auto"))
