"""The Ensemble module: the mean of its members' softmax probabilities, for every registered
text variant and for series; members must agree on what they read and predict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vdcnn_res.errors import UserError
from vdcnn_res.model import Ensemble, ModelConfig, build_model, create_model, list_models

pytestmark = pytest.mark.usefixtures("one_thread")


def _eval_stats(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm statistics and a larger output layer, so members disagree visibly."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    with torch.no_grad():
        model.head.fc.weight.mul_(50)
    return model.eval()


def _text_members(name: str, n: int) -> list[nn.Module]:
    members = []
    for seed in range(n):
        torch.manual_seed(seed)
        members.append(_eval_stats(create_model(name, num_classes=3, channels=(8, 8, 16, 16), hidden_size=16), seed))
    return members


def _series_members(n: int, **kw) -> list[nn.Module]:
    members = []
    for seed in range(n):
        torch.manual_seed(seed)
        settings = dict(
            num_classes=3, input_channels=2, blocks_per_stage=(1, 1), channels=(8, 16), kernel_sizes=(8, 5, 3),
            downsampling="none", head="global_avg", hidden_size=0,
        )  # fmt: skip
        config = ModelConfig(**{**settings, **kw})
        members.append(_eval_stats(build_model(config), seed))
    return members


@pytest.mark.parametrize("name", list_models())
def test_text_ensemble_is_the_mean_of_its_members_probabilities(name):
    members = _text_members(name, 3)
    ids = torch.randint(1, 60, (4, 40))
    lengths = torch.tensor([40, 31, 9, 1])
    with torch.no_grad():
        mean = torch.stack([m(ids, lengths).softmax(-1) for m in members]).mean(0)
        out = Ensemble(members).eval()(ids, lengths)
    assert out.dtype == torch.float32 and out.shape == (4, 3)
    torch.testing.assert_close(out.softmax(-1), mean)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(4))  # already log-probabilities
    assert not torch.allclose(members[0](ids, lengths).softmax(-1), mean, atol=1e-3)  # the members differ


def test_series_ensemble_mixes_architectures_and_stays_padding_invariant():
    members = _series_members(2) + _series_members(1, kernel_sizes=(3, 3), head="kmax_mlp", kmax=2, hidden_size=8)
    ensemble = Ensemble(members).eval()
    x = torch.randn(2, 2, 30)
    lengths = torch.tensor([30, 12])
    with torch.no_grad():
        together = ensemble(x, lengths)
        alone = ensemble(x[1:, :, :12], lengths[1:])
        padded = ensemble(torch.cat([x, torch.full((2, 2, 9), 7.0)], dim=2), lengths)  # garbage padding
        mean = torch.stack([m(x, lengths).softmax(-1) for m in members]).mean(0)
    torch.testing.assert_close(together[1:], alone)
    torch.testing.assert_close(padded, together)
    torch.testing.assert_close(together.softmax(-1), mean)


def test_one_member_gives_its_own_probabilities():
    (member,) = _series_members(1)
    x = torch.randn(3, 2, 20)
    with torch.no_grad():
        torch.testing.assert_close(Ensemble([member])(x).softmax(-1), member(x).softmax(-1))


def test_ensemble_trains_nothing_new_and_keeps_member_weights():
    members = _series_members(2)
    ensemble = Ensemble(members)
    assert sum(p.numel() for p in ensemble.parameters()) == sum(p.numel() for m in members for p in m.parameters())
    assert ensemble.config is members[0].config


@pytest.mark.parametrize(
    "other, words",
    [
        (lambda: _series_members(1, num_classes=4)[0], "num_classes 4"),
        (lambda: _series_members(1, input_channels=5)[0], "input_channels 5"),
        (lambda: create_model("vdcnn9", num_classes=3), "input_channels 0"),
    ],
)
def test_members_that_read_or_predict_differently_are_refused(other, words):
    with pytest.raises(UserError, match=words):
        Ensemble(_series_members(1) + [other()])


def test_an_empty_ensemble_is_refused():
    with pytest.raises(UserError, match="at least one"):
        Ensemble([])
