import math

import pytest
import torch
from torch import nn

from vdcnn_res.training.optim import OptimConfig, build_optimizer, build_scheduler, parameter_groups


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv1d(4, 8, 3), nn.BatchNorm1d(8), nn.Flatten(), nn.Linear(8, 2))


def _lrs(cfg: OptimConfig, steps: int, per: str) -> list[float]:
    opt = build_optimizer(_net(), cfg)
    sched = build_scheduler(opt, cfg, total_steps=steps)
    assert sched is not None and sched["interval"] == per
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched["scheduler"].step()
    return lrs


def test_defaults_are_the_toolkit_recipe():
    cfg = OptimConfig()
    assert (cfg.name, cfg.lr, cfg.weight_decay, cfg.schedule, cfg.warmup_fraction) == ("adamw", 1e-3, 0.05, "cosine", 0.05)


def test_paper_recipe_halves_every_three_epochs():
    cfg = OptimConfig(name="sgd", lr=0.01, weight_decay=0.0, schedule="step")  # configs/paper/recipe.yaml
    assert cfg.momentum == 0.9
    lrs = _lrs(cfg, 10, "epoch")
    assert lrs[:3] == [0.01] * 3
    assert lrs[3:6] == pytest.approx([0.005] * 3)
    assert lrs[6:9] == pytest.approx([0.0025] * 3)
    assert lrs[9] == pytest.approx(0.00125)


def test_warmup_then_cosine_reaches_zero():
    cfg = OptimConfig(name="adamw", lr=1e-3, schedule="cosine", warmup_fraction=0.1)
    lrs = _lrs(cfg, 100, "step")
    assert lrs[0] == pytest.approx(1e-4)  # first of 10 warm-up steps
    assert max(lrs) == pytest.approx(1e-3)
    assert lrs.index(max(lrs)) == 9  # the last warm-up step reaches the peak
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after warm-up
    assert lrs[-1] < 1e-3 * (1 - math.cos(math.pi / 90)) + 1e-9


def test_onecycle_peaks_at_lr():
    lrs = _lrs(OptimConfig(name="adamw", lr=2e-3, schedule="onecycle"), 50, "step")
    assert max(lrs) == pytest.approx(2e-3, rel=1e-3)
    assert lrs[0] < 2e-3 / 10 and lrs[-1] < 2e-3 / 100


def test_constant_schedule_has_no_scheduler():
    cfg = OptimConfig(schedule="constant")
    assert build_scheduler(build_optimizer(_net(), cfg), cfg, 10) is None


def test_weight_decay_skips_biases_and_norm_weights():
    net = _net()
    decay, no_decay = parameter_groups(net, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {p.ndim for p in decay["params"]} == {2, 3}
    assert all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))


def test_lr_auto_is_a_valid_setting_but_builds_nothing():
    cfg = OptimConfig(lr="auto")  # resolved by the range test (training/lr_finder.py) before any build
    with pytest.raises(ValueError, match="range test"):
        build_scheduler(torch.optim.SGD(_net().parameters(), lr=0.1), cfg, 10)


def test_optimizer_kinds():
    assert isinstance(build_optimizer(_net(), OptimConfig(name="adamw")), torch.optim.AdamW)
    sgd = build_optimizer(_net(), OptimConfig(name="sgd", momentum=0.5))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.5


def test_updates_are_fused_on_cpu_and_skipped_where_unsupported():
    for name in ("adamw", "sgd"):
        assert build_optimizer(_net(), OptimConfig(name=name)).defaults["fused"] is True
    assert build_optimizer(_net().to(torch.float64).to("meta"), OptimConfig()).defaults["fused"] is None


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"name": "adam"}, "optim.name"),
        ({"schedule": "linear"}, "optim.schedule"),
        ({"lr": 0.0}, "optim.lr"),
        ({"lr": "fast"}, "optim.lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"step_gamma": 0.0}, "step_gamma"),
        ({"warmup_fraction": 1.0}, "warmup_fraction"),
    ],
)
def test_bad_settings_name_the_field(kwargs, words):
    with pytest.raises(ValueError, match=words):
        OptimConfig(**kwargs)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "step", "constant"])
def test_ngram_bag_trains_at_its_own_lr(schedule):
    from vdcnn_res import VDCNN, ModelConfig

    model = VDCNN(ModelConfig(num_classes=3, depth=9, channels=(4, 4, 4, 4), hidden_size=8, ngram_orders=(1, 2), ngram_buckets=64, ngram_dim=4))
    cfg = OptimConfig(lr=1e-3, ngram_lr_scale=10.0, schedule=schedule)
    opt = build_optimizer(model, cfg)
    build_scheduler(opt, cfg, 100)
    bag = {id(p) for n, p in model.named_parameters() if n.startswith(("ngrams.", "ngram_head."))}
    assert bag  # the model has a bag, and every parameter is in exactly one group
    assert sorted(id(p) for g in opt.param_groups for p in g["params"]) == sorted(id(p) for p in model.parameters())
    key = {"onecycle": "max_lr", "constant": "lr"}.get(schedule, "initial_lr")  # the peak each group starts from
    assert opt.param_groups[0][key] == pytest.approx(1e-3)
    for group in opt.param_groups:
        in_bag = {id(p) in bag for p in group["params"]}
        assert len(in_bag) == 1
        assert group[key] / 1e-3 == pytest.approx(10.0 if in_bag.pop() else 1.0)
    assert OptimConfig(ngram_lr_scale=1.0) and len(parameter_groups(model, 0.05, 1e-3, 1.0)) == 2


def test_ngram_lr_scale_must_be_positive():
    with pytest.raises(ValueError, match="ngram_lr_scale"):
        OptimConfig(ngram_lr_scale=0)
