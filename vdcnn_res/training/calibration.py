"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks") and its metrics.

One scalar T > 0 divides the logits: it leaves every argmax (so accuracy) unchanged and only
sharpens (T < 1) or softens (T > 1) the probabilities. T minimises the negative log-likelihood
of the validation split's logits; the model keeps it as its ``temperature`` buffer (1.0 =
uncalibrated), so checkpoints, exported folders and the ONNX graph carry it.

The NLL of ``logits * b`` is convex in ``b = 1 / T`` (a log-sum-exp minus a linear term), so a
golden-section search over log T in ``[T_MIN, T_MAX]`` finds the optimum of this one-dimensional
problem without a learning rate. An optimum at a bound is refused rather than used: on a split
the model classifies entirely right with a margin the NLL keeps falling as T -> 0 (a T that
small would make every later mistake near-certain), and for a model at chance it keeps falling
as T grows; neither says anything about the right temperature.

ECE (expected calibration error): confidences (the top probability) fall into ``n_bins``
equal-width bins ``[k/n, (k+1)/n)`` (a confidence of exactly 1 into the last); ECE is the
count-weighted mean over bins of |accuracy - mean confidence|. Written here rather than taken
from torchmetrics because the reliability diagram needs the per-bin values, which
torchmetrics keeps private; for confidences below 1 both give the same number (tested).

Branch weights: a model with the n-gram bag sums two classifiers' logits, the CNN's and the
bag's. Trained side by side they are rarely worth the same: on small data the bag is usually
the better one, on long documents the CNN (docs/longdoc_plateau.md §12). :func:`calibrate`
also fits the mix: for each share ``r`` of the bag on a grid (0, 0.05, ..., 1) the logits
``2 (1 - r) z_cnn + 2 r z_bag`` get their own temperature, and the ``r`` with the lowest NLL
wins. The mix changes the argmax, so it is kept only when it also wins on held-out texts: the
validation texts are split into two seeded halves, the mix and the equal sum (temperature only)
are each fitted on one half and scored (NLL) on the other, both ways; the mix is used when its
held-out NLL is lower, and is then fitted on all the texts. The weights keep a mean of 1, so
the temperature still says how sharp the probabilities are.

Multi-label models (one sigmoid per label) get no temperature: :data:`MULTILABEL_NO_TEMPERATURE`
says why. Their post-hoc step is :func:`tune_thresholds`: per label, the decision threshold that
maximises that label's F1 on the validation split.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from vdcnn_res.errors import UserError

__all__ = [
    "N_BINS",
    "T_MAX",
    "T_MIN",
    "Calibration",
    "LogitCollector",
    "MULTILABEL_NO_TEMPERATURE",
    "ReliabilityBins",
    "Thresholds",
    "calibrate",
    "expected_calibration_error",
    "fit_branch_weights",
    "fit_temperature",
    "nll",
    "reliability_bins",
    "check_threshold",
    "tune_thresholds",
]

N_BINS = 15
T_MIN, T_MAX = 0.05, 20.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
MULTILABEL_NO_TEMPERATURE = (
    "temperature scaling is for single-label (softmax) models; a multi-label model keeps its sigmoid "
    "probabilities and uses per-label thresholds tuned on the validation split instead"
)
_THRESHOLD_GRID = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)


def nll(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels under softmax(logits / temperature)."""
    return float(F.cross_entropy(logits.double() / temperature, labels.long()))


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin counts, accuracies and mean confidences (empty bins: 0) over ``n_bins`` equal widths."""

    counts: Tensor  # (n_bins,) int64
    accuracy: Tensor  # (n_bins,) float64
    confidence: Tensor  # (n_bins,) float64

    @property
    def n_bins(self) -> int:
        return len(self.counts)

    @property
    def ece(self) -> float:
        """Count-weighted mean |accuracy - confidence| over the bins (0 for no predictions)."""
        total = int(self.counts.sum())
        if total == 0:
            return 0.0
        return float((self.counts.double() * (self.accuracy - self.confidence).abs()).sum() / total)


def reliability_bins(probs: Tensor, labels: Tensor, n_bins: int = N_BINS) -> ReliabilityBins:
    """Bin the top probability of each row of ``probs`` (N, C) against whether its argmax is ``labels``."""
    if probs.dim() != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs must be (N, C) and labels (N,), got {tuple(probs.shape)} and {tuple(labels.shape)}")
    confidence, predicted = probs.double().max(dim=1)
    correct = (predicted == labels.to(predicted.device)).double()
    index = (confidence * n_bins).floor().long().clamp(0, n_bins - 1)
    counts = torch.bincount(index, minlength=n_bins)
    sums = torch.zeros(n_bins, dtype=torch.float64, device=probs.device)
    safe = counts.clamp(min=1).double()
    accuracy = sums.index_add(0, index, correct) / safe
    mean_confidence = sums.index_add(0, index, confidence) / safe
    return ReliabilityBins(counts.cpu(), accuracy.cpu(), mean_confidence.cpu())


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = N_BINS) -> float:
    """ECE of class probabilities ``probs`` (N, C) against ``labels`` (N,), ``n_bins`` equal-width bins."""
    return reliability_bins(probs, labels, n_bins).ece


def fit_temperature(logits: Tensor, labels: Tensor, iterations: int = 80) -> float:
    """The T in [T_MIN, T_MAX] that minimises the NLL of ``logits / T`` (golden-section search on log T).

    Raises ValueError for empty or non-finite logits: there is nothing sound to fit then.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    z, y = _checked(logits, labels)

    def loss(log_t: float) -> float:
        return float(F.cross_entropy(z / math.exp(log_t), y))

    lo, hi = math.log(T_MIN), math.log(T_MAX)
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(iterations):  # the interval shrinks by 0.618 per step: 80 steps reach ~1e-16
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = loss(b)
    best = min((fa, a), (fb, b), (loss(math.log(T_MIN)), math.log(T_MIN)), (loss(math.log(T_MAX)), math.log(T_MAX)))
    return float(math.exp(best[1]))


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and what it did on the split it was fitted on (ECE in [0, 1])."""

    temperature: float
    texts: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    # Models with more than one branch (the n-gram bag): the weights used (mean 1; all 1 when
    # the mix lost on held-out texts; or as given, with no held-out NLL and the NLL and ECE
    # "before" those of the given mix at T = 1), the held-out NLL of the mix and of the equal
    # sum, and the accuracy before (equal sum) and after (the weights) on the split it was fitted on.
    branch_weights: list[float] | None = None
    heldout_nll_mix: float | None = None
    heldout_nll_equal: float | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, for checkpoints (they load with torch.load(weights_only=True)); the branch
        entries only for a model with two branches."""
        return {**{k: v for k, v in asdict(self).items() if v is not None}, "n_bins": N_BINS}

    @property
    def mixed(self) -> bool:
        """Whether the branches are weighted other than equally."""
        return self.branch_weights is not None and any(w != 1.0 for w in self.branch_weights)

    def summary(self, split: str = "validation", unit: str = "texts") -> str:
        """One line: the temperature (and branch weights), on how many texts (or series: ``unit``),
        NLL and ECE before -> after."""
        line = (
            f"temperature {self.temperature:.3f} fitted on {self.texts} {split} {unit}: "
            f"NLL {self.nll_before:.4f} -> {self.nll_after:.4f}, "
            f"ECE {100 * self.ece_before:.2f} % -> {100 * self.ece_after:.2f} %"
        )
        if self.branch_weights is None:
            return line
        weights = "/".join(f"{w:.2f}" for w in self.branch_weights)
        if self.heldout_nll_mix is None:  # weights given, not fitted
            given = f"{line}; branch weights (cnn/ngrams) {weights}, given"
            if self.accuracy_before is None or self.accuracy_after is None:
                return given
            return f"{given}: accuracy {100 * self.accuracy_before:.2f} % (equal weights) -> {100 * self.accuracy_after:.2f} %"
        verdict = "kept" if self.mixed else "not kept (equal weights)"
        return (
            f"{line}; branch weights (cnn/ngrams) {weights}, {verdict}: held-out NLL {self.heldout_nll_mix:.4f} "
            f"vs {self.heldout_nll_equal:.4f} equal, accuracy {100 * self.accuracy_before:.2f} % -> "
            f"{100 * self.accuracy_after:.2f} %"
        )


_MIX_GRID = [k / 20 for k in range(21)]  # the bag's share r of the two branches' logits
_TIE = 1e-9  # NLL differences below this are rounding, not evidence
# T and the weights are fitted on at most this many logits (texts x classes; a seeded sample of the
# texts above it), so that a large validation split costs seconds, not minutes, per validation.
MAX_FIT_LOGITS = 2**22


def _fit_rows(texts: int, classes: int) -> Tensor:
    """All row indices, or a seeded sample of them keeping texts x classes <= MAX_FIT_LOGITS."""
    keep = max(MAX_FIT_LOGITS // max(classes, 1), 2)
    if texts <= keep:
        return torch.arange(texts)
    return torch.randperm(texts, generator=torch.Generator().manual_seed(1))[:keep].sort().values


def _mix(branches: Tensor, r: float) -> Tensor:
    """(N, 2, C) branch logits -> (N, C): ``2 (1 - r) z_cnn + 2 r z_bag`` (r = 0.5: their sum)."""
    return 2.0 * (1.0 - r) * branches[:, 0] + 2.0 * r * branches[:, 1]


def _fit_mix(branches: Tensor, labels: Tensor) -> tuple[float, float]:
    """The bag's share r on the grid and its temperature with the lowest NLL on these texts."""
    best = None
    for r in _MIX_GRID:
        z = _mix(branches, r)
        t = fit_temperature(z, labels, iterations=40)
        candidate = (nll(z, labels, t), r, t)
        if best is None or candidate[0] < best[0] - _TIE or (candidate[0] <= best[0] + _TIE and abs(r - 0.5) < abs(best[1] - 0.5)):
            best = candidate  # ties go to the share nearest equal
    return best[1], best[2]


def fit_branch_weights(branches: Tensor, labels: Tensor, folds: int = 2) -> tuple[list[float], float, float, float]:
    """Weights (mean 1) for two branches' logits (N, 2, C) and the held-out NLL of the mix and of the
    equal sum: ``(weights, temperature, heldout_mix, heldout_equal)``; weights are [1, 1] (and the
    temperature the equal sum's) unless the mix wins on held-out halves (module docstring)."""
    z, y = branches.detach().double().cpu(), labels.detach().long().cpu()
    part = torch.randperm(len(y), generator=torch.Generator().manual_seed(0)) % folds
    heldout_mix = heldout_equal = 0.0
    for k in range(folds):
        fit, score = part != k, part == k
        if not bool(fit.any()) or not bool(score.any()):
            raise ValueError(f"{len(y)} texts are too few to fit branch weights on held-out halves")
        r, t = _fit_mix(z[fit], y[fit])
        heldout_mix += nll(_mix(z[score], r), y[score], t) * int(score.sum())
        equal = z[fit].sum(1)
        heldout_equal += nll(z[score].sum(1), y[score], fit_temperature(equal, y[fit], iterations=40)) * int(score.sum())
    heldout_mix, heldout_equal = heldout_mix / len(y), heldout_equal / len(y)
    if heldout_mix < heldout_equal - _TIE:
        r, t = _fit_mix(z, y)
    else:
        r, t = 0.5, fit_temperature(z.sum(1), y)
    return [2.0 * (1.0 - r), 2.0 * r], t, heldout_mix, heldout_equal


def calibrate(logits: Tensor, labels: Tensor, branch_weights: Sequence[float] | None = None) -> Calibration:
    """Fit T on uncalibrated ``logits`` (N, C) and measure NLL and ECE before and after; with the
    logits of two branches (N, 2, C), also their weights (module docstring), unless
    ``branch_weights`` gives them: then T alone is fitted for that mix.

    Raises ValueError when there is nothing sound to fit: no or non-finite logits, or an NLL
    minimum at a bound of the search (see the module docstring).
    """
    if logits.dim() == 3 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.dim() == 3:
        return _calibrate_branches(logits, labels, branch_weights)
    if logits.dim() == 2 and labels.shape == logits.shape[:1]:
        rows = _fit_rows(len(labels), logits.shape[-1]).to(logits.device)
        temperature = fit_temperature(logits[rows], labels[rows])
    else:
        temperature = fit_temperature(logits, labels)  # raises the shape error
    _check_bounds(temperature, len(labels))
    z, y = logits.detach().double().cpu(), labels.detach().long().cpu()
    return Calibration(
        temperature=temperature,
        texts=len(y),
        nll_before=nll(z, y),
        nll_after=nll(z, y, temperature),
        ece_before=expected_calibration_error(z.softmax(-1), y),
        ece_after=expected_calibration_error((z / temperature).softmax(-1), y),
    )


def _calibrate_branches(branches: Tensor, labels: Tensor, given: Sequence[float] | None = None) -> Calibration:
    if branches.shape[1] != 2 or labels.shape != branches.shape[:1]:
        raise ValueError(f"branch logits must be (N, 2, C) and labels (N,), got {tuple(branches.shape)} and {tuple(labels.shape)}")
    if given is not None and (len(given) != 2 or not any(given) or any(not 0 <= w < math.inf for w in given)):
        raise ValueError(f"branch weights must be two finite numbers >= 0, not both 0; got {list(given)}")
    z, y = _checked(branches, labels)
    rows = _fit_rows(len(y), z.shape[-1])
    if given is None:
        weights, temperature, heldout_mix, heldout_equal = fit_branch_weights(z[rows], y[rows])
    else:  # the weights are the user's: only the temperature of their mix is fitted
        weights, heldout_mix, heldout_equal = [float(w) for w in given], None, None
        temperature = fit_temperature(weights[0] * z[rows, 0] + weights[1] * z[rows, 1], y[rows])
    _check_bounds(temperature, len(y))
    equal = z.sum(1)
    mix = weights[0] * z[:, 0] + weights[1] * z[:, 1]
    before = equal if given is None else mix  # given weights: NLL and ECE of their mix at temperature 1 -> T
    after = mix / temperature
    return Calibration(
        temperature=temperature,
        texts=len(y),
        nll_before=nll(before, y),
        nll_after=nll(after, y),
        ece_before=expected_calibration_error(before.softmax(-1), y),
        ece_after=expected_calibration_error(after.softmax(-1), y),
        branch_weights=[round(w, 4) for w in weights],
        heldout_nll_mix=heldout_mix,
        heldout_nll_equal=heldout_equal,
        accuracy_before=float((equal.argmax(1) == y).double().mean()),
        accuracy_after=float((after.argmax(1) == y).double().mean()),
    )


def _checked(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Logits as float64 and labels as int64 on the CPU; ValueError when there are none or they are not finite."""
    if len(labels) == 0:
        raise ValueError("no validation logits to fit a temperature on")
    z, y = logits.detach().double().cpu(), labels.detach().long().cpu()
    if not bool(torch.isfinite(z).all()):
        raise ValueError("the validation logits are not all finite")
    return z, y


def _check_bounds(temperature: float, texts: int) -> None:
    if not T_MIN * 1.001 < temperature < T_MAX / 1.001:
        why = "every text is classified right with a margin" if temperature < 1 else "the predictions are no better than chance"
        raise ValueError(
            f"the NLL of these {texts} texts is lowest at the search bound T = {temperature:g} ({why}), "
            "which says nothing about the right temperature"
        )


class LogitCollector(Metric):
    """Keeps an epoch's logits (float32) and labels; ``compute()`` gathers them from every DDP rank.

    Its states are not part of the module's state_dict, so checkpoints do not change.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("logits", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        self.logits.append(logits.detach().float())
        self.labels.append(labels.detach().long())

    def compute(self) -> tuple[Tensor, Tensor]:
        def cat(states: Any) -> Tensor:
            return torch.cat(states) if isinstance(states, list) else states

        return cat(self.logits), cat(self.labels)


def check_threshold(value: Any, what: str = "threshold") -> float:
    """A decision threshold as a float in [0, 1]; anything else is a UserError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise UserError(f"{what} must be a probability in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Thresholds:
    """Per-label decision thresholds tuned on a split, and the micro-F1 there before (all at ``default``) and after."""

    thresholds: list[float]
    texts: int
    default: float
    f1_micro_before: float
    f1_micro_after: float

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, for checkpoints (they load with torch.load(weights_only=True))."""
        return asdict(self)

    def summary(self, split: str = "validation") -> str:
        return (
            f"per-label thresholds {min(self.thresholds):.2f}-{max(self.thresholds):.2f} tuned on {self.texts} {split} texts: "
            f"micro-F1 {100 * self.f1_micro_before:.2f} % (all at {self.default:g}) -> {100 * self.f1_micro_after:.2f} %"
        )


def _micro_f1(predicted: Tensor, labels: Tensor) -> float:
    tp = float((predicted & labels).sum())
    fp, fn = float((predicted & ~labels).sum()), float((~predicted & labels).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def tune_thresholds(probs: Tensor, labels: Tensor, default: float = 0.5) -> Thresholds:
    """Per label, the threshold of a grid (0.02, 0.04, ..., 0.98) that maximises its F1 on these
    (N, L) probabilities against multi-hot ``labels``; ties go to the threshold nearest ``default``.

    A label without a positive text in the split keeps ``default`` (its F1 cannot be measured).
    Raises ValueError for no rows or non-finite probabilities.
    """
    if probs.dim() != 2 or labels.shape != probs.shape:
        raise ValueError(f"probs and labels must both be (N, L), got {tuple(probs.shape)} and {tuple(labels.shape)}")
    if len(probs) == 0:
        raise ValueError("no validation texts to tune thresholds on")
    p, y = probs.detach().double().cpu(), labels.detach().cpu() > 0
    if not bool(torch.isfinite(p).all()):
        raise ValueError("the validation probabilities are not all finite")
    grid = _THRESHOLD_GRID
    chosen = []
    for j in range(p.shape[1]):
        positives = int(y[:, j].sum())
        if positives == 0:
            chosen.append(float(default))
            continue
        predicted = p[:, j, None] >= grid[None, :]  # (N, T)
        tp = (predicted & y[:, j, None]).sum(0).double()
        f1 = 2 * tp / (predicted.sum(0).double() + positives)
        best = f1.max()
        ties = torch.nonzero(f1 >= best - 1e-12).flatten()
        chosen.append(float(grid[ties[(grid[ties] - default).abs().argmin()]]))
    thresholds = torch.tensor(chosen, dtype=torch.float64)
    return Thresholds(
        thresholds=[round(t, 4) for t in chosen],
        texts=len(p),
        default=float(default),
        f1_micro_before=_micro_f1(p >= default, y),
        f1_micro_after=_micro_f1(p >= thresholds[None, :], y),
    )
