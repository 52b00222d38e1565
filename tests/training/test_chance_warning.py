"""The one-line warning when training is still at chance after a share of the budget (issue 20)."""

import math
from types import SimpleNamespace

import pytest

from vdcnn_res.training.progress import EpochSummary, _plateau_loss


def trainer(epoch: int, max_epochs: int = 8, max_steps: int = -1, step: int = 0):
    return SimpleNamespace(current_epoch=epoch, max_epochs=max_epochs, max_steps=max_steps, global_step=step)


MODULE = SimpleNamespace(arch=SimpleNamespace(num_classes=20))
CHANCE = math.log(20)


def test_warns_once_when_the_loss_is_at_chance_after_a_quarter_of_the_budget():
    summary = EpochSummary()
    with pytest.warns(UserWarning) as caught:
        summary._warn_if_at_chance(trainer(epoch=0), MODULE, CHANCE)  # 1/8 of the budget: too early
        summary._warn_if_at_chance(trainer(epoch=1), MODULE, CHANCE)  # 2/8: warns
        summary._warn_if_at_chance(trainer(epoch=2), MODULE, CHANCE)  # once only
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "still at chance (ln 20 = 2.996) after 25 % of the budget" in message
    assert "--model.arch.head_norm batch" in message


@pytest.mark.parametrize("case", ["learning", "disabled", "step budget too early"])
def test_no_warning_when_learning_disabled_or_too_early(case, recwarn):
    summary = EpochSummary(chance_warning_after=0 if case == "disabled" else 0.25)
    if case == "step budget too early":
        summary._warn_if_at_chance(trainer(epoch=0, max_epochs=-1, max_steps=1000, step=100), MODULE, CHANCE)
    else:
        summary._warn_if_at_chance(trainer(epoch=3), MODULE, 0.8 * CHANCE if case == "learning" else CHANCE)
    assert not [w for w in recwarn if "still at chance" in str(w.message)]


def test_step_budgets_count_steps():
    with pytest.warns(UserWarning, match="after 30 % of the budget"):
        EpochSummary()._warn_if_at_chance(trainer(epoch=0, max_epochs=-1, max_steps=1000, step=300), MODULE, CHANCE)


def test_a_centred_head_is_advised_only_where_the_head_is_not_centred_already():
    centred = SimpleNamespace(arch=SimpleNamespace(num_classes=20, head_norm="batch"))
    with pytest.warns(UserWarning) as caught:
        EpochSummary()._warn_if_at_chance(trainer(epoch=3), centred, CHANCE)
    message = str(caught[0].message)
    assert "head_norm" not in message and "try a lower --model.optim.lr" in message


APART = SimpleNamespace(arch=SimpleNamespace(num_classes=20, head_norm="none"), sum_weight=0.0)


def test_a_stuck_cnn_branch_is_named_while_the_bag_learns():
    """configs/text/apart.yaml on long documents: the CNN's head dies while the bag learns."""
    with pytest.warns(UserWarning) as caught:
        EpochSummary()._warn_if_at_chance(trainer(epoch=3), APART, 1.2 * CHANCE, {"cnn": CHANCE, "ngrams": 0.5 * CHANCE})
    message = str(caught[0].message)
    assert message.startswith(f"the CNN branch's own training loss ({CHANCE:.3f} over the epoch's last steps) is still at chance")
    assert "--model.arch.head_norm layer --model.arch.hidden_size 512" in message  # docs/results.md §21


@pytest.mark.parametrize("sum_weight", [0.0, 1.0])
def test_an_untrained_sum_is_not_judged_and_learning_branches_do_not_warn(sum_weight, recwarn):
    module = SimpleNamespace(arch=MODULE.arch, sum_weight=sum_weight)
    # The summed logits of two branches trained apart may score above ln C while both learn.
    EpochSummary()._warn_if_at_chance(trainer(epoch=3), module, 1.2 * CHANCE if not sum_weight else 0.5 * CHANCE, {"cnn": 0.6 * CHANCE, "ngrams": 0.5 * CHANCE})
    assert not [w for w in recwarn if "still at chance" in str(w.message)]


def test_a_slow_bag_is_not_judged(recwarn):
    """On long documents the bag sees little signal and learns late, not never (its loss falls in epoch 2)."""
    EpochSummary()._warn_if_at_chance(trainer(epoch=3), MODULE, 0.5 * CHANCE, {"ngrams": CHANCE})
    assert not [w for w in recwarn if "still at chance" in str(w.message)]


def quarters(*means: float, steps: int = 20) -> list[float]:
    """An epoch's per-step losses whose four quarters have these means."""
    return [m for m in means for _ in range(steps // 4)]


def test_a_loss_still_falling_is_not_judged_and_a_flat_one_is():
    """The epoch-1 CNN losses, by quarter, of two long-document runs (docs/longdoc_plateau.md §16): a
    linear head starts far above chance and is learning; a dead head has flattened out at chance."""
    learning, dead = quarters(4.686, 4.456, 3.589, 2.950), quarters(4.392, 3.007, 2.928, 2.911)
    assert sum(learning) / len(learning) > math.log(18) and math.isnan(_plateau_loss(learning))
    assert _plateau_loss(dead) == pytest.approx(2.911)
    assert math.isnan(_plateau_loss([])) and _plateau_loss([3.0]) == 3.0 and _plateau_loss([3.0, 3.0, 2.9]) == 2.9
    assert math.isnan(_plateau_loss([3.0, 3.0, 3.0, 2.0]))  # the last quarter 5 % or more under the one before


def test_the_epoch_summary_judges_only_a_flat_end_of_epoch(recwarn, capsys):
    """Through the callback's epoch end: a CNN branch falling from far above chance is not warned about."""
    import torch

    module = SimpleNamespace(arch=SimpleNamespace(num_classes=18, head_norm="none"), sum_weight=0.0)
    for losses, warned in ((quarters(4.686, 4.456, 3.589, 2.950), False), (quarters(4.392, 3.007, 2.928, 2.911), True)):
        summary = EpochSummary()
        summary.on_train_epoch_start(None, module)
        for value in losses:
            summary._losses.append(value)
            summary._branch_losses.setdefault("cnn", []).append(torch.tensor(value))
        fit = SimpleNamespace(sanity_checking=False, is_global_zero=True, callback_metrics={}, checkpoint_callback=None,
                              progress_bar_callback=None, current_epoch=0, max_epochs=3, max_steps=-1, global_step=len(losses))  # fmt: skip
        summary.on_train_epoch_end(fit, module)
        assert "epoch 1/3" in capsys.readouterr().out
        assert bool([w for w in recwarn if "still at chance" in str(w.message)]) == warned
        recwarn.clear()
