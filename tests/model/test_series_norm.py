"""SeriesZScore and input_norm=zscore_keep_scale: z-scores over valid positions, the level and
log-scale they remove handed to the classifier, and a model that sees a series' scale."""

from __future__ import annotations

import math

import pytest
import torch

from vdcnn_res.model import ModelConfig, build_model
from vdcnn_res.model.series_norm import SeriesZScore

pytestmark = pytest.mark.usefixtures("one_thread")


def keep_of(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).unsqueeze(1)


def test_z_scores_cover_valid_positions_only_and_padding_is_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 30, generator=g) * torch.tensor([[[5.0], [0.01]]]) + 100.0
    lengths = [30, 12, 2]
    keep = keep_of(lengths, 30)
    x = torch.where(keep, x, torch.full_like(x, 1e6))  # whatever the padding holds
    z, stats = SeriesZScore(2).train()(x, keep)
    assert stats.shape == (3, 4)
    for i, n in enumerate(lengths):
        valid = z[i, :, :n]
        torch.testing.assert_close(valid.mean(dim=-1), torch.zeros(2), atol=1e-5, rtol=0)
        torch.testing.assert_close(valid.std(dim=-1, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
        assert (z[i, :, n:] == 0).all()


def test_the_statistics_are_each_series_level_and_log_scale():
    norm = SeriesZScore(1).eval()  # running statistics 0 / 1: the raw asinh(mean) and log(sd)
    base = torch.sin(torch.linspace(0, 6, 40))[None, None]
    scaled = torch.cat([base, base * 1000 + 5])  # the same shape, 1000x the scale, another level
    z, stats = norm(scaled, torch.ones(2, 1, 40, dtype=torch.bool))
    torch.testing.assert_close(z[0], z[1], atol=1e-4, rtol=0)  # the z-scores cannot tell them apart
    sd = base.std(unbiased=False)
    torch.testing.assert_close(stats[:, 1], torch.log(torch.stack([sd, sd * 1000])), atol=1e-4, rtol=0)
    torch.testing.assert_close(stats[:, 0], torch.asinh(torch.stack([base.mean(), base.mean() * 1000 + 5])), atol=1e-3, rtol=0)
    assert stats[1, 1] - stats[0, 1] == pytest.approx(math.log(1000), abs=1e-4)


def test_a_large_level_keeps_the_signal_digits():
    signal = torch.sin(torch.linspace(0, 6, 200, dtype=torch.float64))
    x = (signal * 0.5 + 1e4).float()[None, None]
    z, _ = SeriesZScore(1).eval()(x, torch.ones(1, 1, 200, dtype=torch.bool))
    expected = (signal - signal.mean()) / signal.std(unbiased=False)
    torch.testing.assert_close(z[0, 0].double(), expected, atol=5e-3, rtol=0)


def test_a_flat_channel_is_only_centred_and_one_series_trains_on_running_statistics():
    norm = SeriesZScore(2).train()
    x = torch.stack([torch.full((10,), 3.0), torch.arange(10.0)])[None]
    z, stats = norm(x, torch.ones(1, 1, 10, dtype=torch.bool))
    assert (z[0, 0] == 0).all() and torch.isfinite(stats).all()
    assert norm.stats_norm.num_batches_tracked == 0  # a batch of one leaves the running statistics alone


def test_a_model_with_zscore_keep_scale_tells_scales_apart_and_ignores_them_in_the_convolutions():
    config = ModelConfig(
        num_classes=3, input_channels=1, blocks_per_stage=(1,), channels=(8,), kernel_sizes=(8, 5, 3),
        downsampling="none", head="global_avg", hidden_size=0, input_norm="zscore_keep_scale",
    )  # fmt: skip
    assert config.num_features == 8 + 2
    model = build_model(config).eval()
    base = torch.randn(1, 1, 50, generator=torch.Generator().manual_seed(3))
    a, b = model.forward_features(base), model.forward_features(base * 1000)
    torch.testing.assert_close(a[:, :8], b[:, :8], atol=1e-4, rtol=1e-4)  # the CNN sees the same z-scores
    assert (b[0, 9] - a[0, 9]).item() == pytest.approx(math.log(1000) / math.sqrt(1 + 1e-5), rel=1e-4)
    assert not torch.allclose(model(base), model(base * 1000))
    plain = build_model(ModelConfig(**{**config.__dict__, "input_norm": "none"}))
    assert plain.config.num_features == 8 and not any("stats_norm" in n for n, _ in plain.named_buffers())
