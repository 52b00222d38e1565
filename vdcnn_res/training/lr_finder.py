"""`model.optim.lr: auto`: a learning-rate range test before training, on Lightning's LR finder.

Lightning's :class:`~pytorch_lightning.callbacks.LearningRateFinder` runs the test: it saves a
checkpoint, trains ``steps`` batches while an exponential schedule raises the lr from
``min_lr`` towards ``max_lr`` (stopping once the smoothed loss exceeds 4x its best), then
restores the weights, optimizer, loops and callbacks from that checkpoint, inside
``isolate_rng`` (so dropout and every RNG continue as if no test had run). The data order is
seeded by ``(seed, epoch)`` (data/sampler.py), so the real run sees the same batches.

What is done here instead of Lightning's defaults, and why:

- **The suggestion rule.** Lightning proposes the steepest point of a loss curve that it has
  smoothed with a bias-corrected EMA (beta 0.98); that EMA lags ~50 steps (several decades of
  lr in a 100-step test) and the steepest slope of a noisy curve jumps from run to run. Here
  the per-step losses are recovered exactly from Lightning's EMA (:func:`raw_losses`), the curve is
  cut where it diverges, smoothed with a centred window (running median, then running mean:
  no lag). The rule (:func:`suggest_lr`): if the smoothed loss falls clearly (beyond its noise)
  the lr at its minimum / ``divisor`` (10, fastai's "minimum/10"); if it stays flat (our deep
  nets often learn nothing in 100 steps from scratch) the lr where it starts to climb or turn
  ragged / ``edge_divisor`` (2: Smith's highest usable peak, with a margin); clipped to
  ``[lowest, highest]``. A curve that neither falls nor rises gets the optimizer's recipe lr
  (``optim.DEFAULT_LR``), and says so.
- **The schedule.** Lightning writes the suggestion into the optimizer's param groups, which a
  warm-up/cosine ``LambdaLR`` then overwrites from its stored base lr at the next step; here
  ``optim.lr`` is set and the optimizer and schedule are rebuilt from it
  (``strategy.setup_optimizers``), so warm-up, cosine, one-cycle and step all use the chosen lr.
- **Cost.** At most ``steps`` batches (default 100), and never past the first epoch (no
  validation, no epoch end); with fewer than ``MIN_STEPS`` batches the test is skipped and
  the recipe lr is used. The line printed after the test gives its steps and seconds.
- **Resuming.** The chosen lr is written into the checkpoint's hyper-parameters; a resumed
  run takes it from there instead of testing again (a test on resumed weights would also
  undo Lightning's restore of the optimizer state).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateFinder
from pytorch_lightning.tuner import lr_finder as lightning_lr_finder

from vdcnn_res.errors import UserError
from vdcnn_res.training.optim import AUTO, DEFAULT_LR

__all__ = ["LRRangeTest", "Suggestion", "raw_losses", "suggest_lr"]

MIN_STEPS = 20  # fewer points cannot show a minimum through the smoothing window
LIGHTNING_BETA = 0.98  # the EMA factor of Lightning's _LRCallback (tests/training/test_lr_finder.py checks it)
PLOT_FILE = "lr_find.png"


@dataclass
class Suggestion:
    """The outcome of :func:`suggest_lr`: ``lr`` is None when the curve shows no usable minimum."""

    lr: float | None
    reason: str  # one phrase for the report line
    lrs: np.ndarray  # the points used (finite, before divergence)
    smoothed: np.ndarray
    index: int | None = None  # into lrs: the valley's minimum or the edge the choice comes from
    kind: str = ""  # "minimum" or "edge" (what `index` marks)

    @property
    def lr_at_index(self) -> float | None:
        return None if self.index is None else float(self.lrs[self.index])


def raw_losses(smoothed: Sequence[float], first_step: int = 1, beta: float = LIGHTNING_BETA) -> np.ndarray:
    """Undo Lightning's bias-corrected EMA: ``smoothed[i] = avg_i / (1 - beta**(step_i + 1))``,
    ``avg_i = beta * avg_{i-1} + (1 - beta) * loss_i``, with ``step_i = first_step + i`` the global
    step after batch i. Exact up to float rounding; NaN from a non-finite loss on."""
    s = np.asarray(smoothed, dtype=np.float64)
    steps = first_step + np.arange(len(s))
    avg = s * (1.0 - beta ** (steps + 1.0))
    previous = np.concatenate([[0.0], avg[:-1]])
    return (avg - beta * previous) / (1.0 - beta)


def _running(values: np.ndarray, width: int, reduce: Any) -> np.ndarray:
    """Centred running `reduce` (np.median, np.mean) over `width` points, narrower at the ends."""
    half = width // 2
    return np.array([reduce(values[max(0, i - half) : i + half + 1]) for i in range(len(values))])


def suggest_lr(
    lrs: Sequence[float],
    losses: Sequence[float],
    *,
    divisor: float = 10.0,
    edge_divisor: float = 2.0,
    lowest: float = 1e-5,
    highest: float = 0.1,
    min_drop: float = 0.02,
    rise: float = 0.15,
    diverge_factor: float = 2.0,
) -> Suggestion:
    """The lr from a range test's per-step losses, by a rule that holds up on noisy curves.

    1. Keep finite points; drop everything from the first point whose running median (window
       ~n/10) exceeds `diverge_factor` x its lowest value so far (the blow-up would otherwise
       leak into the smoothing before it).
    2. Smooth what is left: running median, then running mean, both centred (no lag). The
       noise level is the standard error of that curve (residuals' MAD / sqrt(window)).
    3. A *valley* is a fall of the smoothed loss below its first value by more than `min_drop`
       (relative) and 3 standard errors. With one: the lr at the minimum / `divisor` (fastai's
       "minimum/10").
    4. Without one, the *edge*: the first lr where the smoothed loss rises above the plateau
       (the median of the losses so far, after one window) by more than `rise` (relative) and
       4 standard errors (the smoothed curve's errors are correlated: 3 is crossed by noise), i.e. where the loss
       starts to climb or turn ragged. Smith's range test takes that as the highest usable
       peak of a warm-up schedule; the choice is edge / `edge_divisor` for a margin. (Our deep
       nets often learn nothing in 100 steps from scratch: flat, then diverging.)
    5. Neither a valley nor an edge: no suggestion (the caller uses the recipe's lr).
    6. Clip to [lowest, highest].
    """
    x = np.asarray(lrs, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    keep = np.isfinite(y) & np.isfinite(x) & (x > 0)
    x, y = x[keep], y[keep]
    if len(x) < MIN_STEPS:
        return Suggestion(None, f"only {len(x)} usable points before the test stopped (need {MIN_STEPS})", x, y)
    width = max(5, len(x) // 10) | 1
    median = _running(y, width, np.median)
    blown = np.nonzero(median > diverge_factor * np.minimum.accumulate(median))[0]
    end = int(blown[0]) if len(blown) else len(x)
    x, y, smoothed = x[:end], y[:end], _running(median[:end], width, np.mean)
    if len(x) < MIN_STEPS // 2:
        edge = float(x[-1]) if len(x) else float(np.asarray(lrs)[0])
        return Suggestion(float(np.clip(edge / edge_divisor, lowest, highest)),
                          f"the loss diverged at once, at {edge:.2g}; {edge:.2g} / {edge_divisor:g}", x, smoothed)  # fmt: skip
    residual = y - smoothed
    noise = 1.4826 * float(np.median(np.abs(residual - np.median(residual)))) / math.sqrt(width)

    def clip(lr: float, why: str, index: int, kind: str) -> Suggestion:
        chosen = float(np.clip(lr, lowest, highest))
        clipped = "" if chosen == lr else f", clipped to [{lowest:g}, {highest:g}]"
        return Suggestion(chosen, why + clipped, x, smoothed, index, kind)

    i = int(np.argmin(smoothed))
    drop = smoothed[0] - smoothed[i]
    if drop > min_drop * abs(smoothed[0]) and drop > 3 * noise:
        return clip(float(x[i]) / divisor, f"smoothed-loss minimum at {x[i]:.2g} / {divisor:g}", i, "minimum")
    level = np.array([np.median(y[: j + 1]) for j in range(len(y))])  # the plateau so far (a running min drifts low)
    up = np.nonzero((smoothed - level > rise * np.abs(level)) & (smoothed - level > 4 * noise))[0]
    up = up[up >= width]  # a plateau needs a window of points before it can be left
    if len(up) or end < len(median):
        j = int(up[0]) if len(up) else len(x) - 1
        return clip(float(x[j]) / edge_divisor, f"flat until the loss rose at {x[j]:.2g}; {x[j]:.2g} / {edge_divisor:g}", j, "edge")
    return Suggestion(None, f"flat curve (no fall beyond the noise, no rise up to {x[-1]:.2g})", x, smoothed)


def plot_range_test(
    lrs: Sequence[float], losses: Sequence[float], suggestion: Suggestion, chosen: float, path: str | Path
) -> Path:
    """Loss against lr (log axis): the per-step losses, the smoothed curve, its minimum, the choice."""
    from vdcnn_res.training.plotting import plt  # Agg backend, set once there

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        x, y = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
        ok = np.isfinite(y)
        ax.plot(x[ok], y[ok], color="0.7", lw=0.8, label="loss per step")
        if len(suggestion.smoothed):
            ax.plot(suggestion.lrs, suggestion.smoothed, color="C0", lw=2, label="smoothed (until divergence)")
        if suggestion.index is not None:
            i = suggestion.index
            ax.plot(suggestion.lrs[i], suggestion.smoothed[i], "o", color="C3", label=suggestion.kind)
        ax.axvline(chosen, color="C2", ls="--", label=f"chosen lr {chosen:.3g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        if ok.any():
            low, high = np.percentile(y[ok], [0, 95])
            ax.set_ylim(low - 0.05 * (high - low), high + 0.1 * (high - low) + 1e-9)
        ax.set_title(suggestion.reason, fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


@contextmanager
def _without_tqdm_bar() -> Any:
    """Lightning's range test draws its own tqdm bar (``progress_bar_refresh_rate=1`` is hard-coded
    in ``_lr_find``) even when the trainer has no progress bar; swap in its callback without it."""
    original = lightning_lr_finder._LRCallback

    class _Quiet(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "progress_bar_refresh_rate": 0})

    lightning_lr_finder._LRCallback = _Quiet
    try:
        yield
    finally:
        lightning_lr_finder._LRCallback = original


class LRRangeTest(LearningRateFinder):
    """Resolves ``model.optim.lr: auto`` with a range test at the start of `fit` (see the module doc).

    Does nothing when the lr is a number, so the CLI can always add it. The chosen lr is set on
    the module (``optim.lr`` and its hyper-parameters, so checkpoints record it) and the optimizer
    and schedule are rebuilt from it; one line reports the choice, its cost and the curve's PNG
    (``lr_find.png`` in the log folder).
    """

    def __init__(
        self,
        steps: int = 100,
        min_lr: float = 1e-5,
        max_lr: float = 1.0,
        divisor: float = 10.0,
        edge_divisor: float = 2.0,
        lowest: float = 1e-5,
        highest: float = 0.1,
        plot: bool = True,
    ) -> None:
        """
        Args:
            steps: most training batches the test takes (also capped by the first epoch).
            min_lr: lr of the first test step.
            max_lr: lr the exponential schedule would reach at the last step.
            divisor: with a clear fall, the choice is the lr at the smoothed-loss minimum divided by this.
            edge_divisor: flat until it diverges: the choice is the lr where it diverges divided by this.
            lowest: the choice is never below this.
            highest: the choice is never above this.
            plot: write lr_find.png next to the logs.
        """
        if steps < MIN_STEPS:
            raise UserError(f"lr_finder.steps must be >= {MIN_STEPS}, got {steps}")
        if not 0 < min_lr < max_lr:
            raise UserError(f"lr_finder needs 0 < min_lr < max_lr, got {min_lr} and {max_lr}")
        if not 0 < lowest <= highest or divisor < 1 or edge_divisor < 1:
            raise UserError(
                f"lr_finder needs 0 < lowest <= highest and divisor, edge_divisor >= 1; got {lowest}, {highest}, {divisor}, {edge_divisor}"
            )
        super().__init__(min_lr=min_lr, max_lr=max_lr, num_training_steps=steps, update_attr=False)
        self.steps, self.divisor, self.edge_divisor, self.plot = steps, divisor, edge_divisor, plot
        self.lowest, self.highest = lowest, highest
        self.chosen: float | None = None  # the lr this fit uses, once resolved
        self.suggestion: Suggestion | None = None
        self.seconds = 0.0
        self._pending = False
        self._testing = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        optim = getattr(pl_module, "optim", None)
        if stage != "fit" or optim is None or optim.lr != AUTO:
            return
        self._pending = True
        optim.lr = self._min_lr  # only so configure_optimizers can run; replaced before training

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Resuming: take the lr the checkpoint's run chose (before the optimizer is built)."""
        if not self._pending or self._testing:
            return
        saved = checkpoint.get("hyper_parameters", {}).get("optim", {}).get("lr")
        if isinstance(saved, (int, float)) and not isinstance(saved, bool) and saved > 0:
            self._resolve(trainer, pl_module, float(saved), rebuild=False)
            if trainer.is_global_zero:
                print(f"lr auto: {saved:.3g} (the resumed checkpoint's; no new range test)", flush=True)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._pending:
            return
        if trainer.ckpt_path:
            raise UserError(
                "model.optim.lr=auto: the checkpoint being resumed does not record a learning rate; "
                "set model.optim.lr to the rate it was trained with"
            )
        optimizer_name = pl_module.optim.name
        fallback = DEFAULT_LR[optimizer_name]
        trainer.estimated_stepping_batches  # noqa: B018  (sets up the train loader: num_training_batches)
        batches = trainer.num_training_batches
        steps = int(min(self.steps, batches - 1)) if math.isfinite(batches) else self.steps
        start = time.perf_counter()
        lrs: list[float] = []
        losses: list[float] = []
        if steps < MIN_STEPS:
            self.suggestion = Suggestion(None, f"no range test: {batches} batches per epoch (need {MIN_STEPS + 1})",
                                         np.array([]), np.array([]))  # fmt: skip
            steps = 0
        else:
            self._num_training_steps = steps
            first_step = trainer.global_step + 1
            self._testing = True
            # With the module's flag, a non-finite loss ends the test (should_stop) instead of the run.
            armed = hasattr(pl_module, "in_range_test")
            if armed:
                pl_module.in_range_test = True
            try:
                quiet = trainer.progress_bar_callback is None  # --trainer.enable_progress_bar=false
                with _without_tqdm_bar() if quiet else nullcontext():
                    self.lr_find(trainer, pl_module)
            except UserError as err:  # the module refused a non-finite loss: the Trainer cannot go on
                raise UserError(
                    f"lr auto: the range test's loss became non-finite before its stop rule ({err}); "
                    f"lower lr_finder.max_lr (now {self._max_lr:g}) or set model.optim.lr"
                ) from err
            finally:
                self._testing = False
                if armed:
                    pl_module.in_range_test = False
            finder = self.optimal_lr
            if finder is None or not finder.results:  # Lightning skips it under fast_dev_run
                self.suggestion = Suggestion(None, "range test skipped (fast_dev_run)", np.array([]), np.array([]))
            else:
                lrs = list(finder.results["lr"])
                losses = raw_losses(finder.results["loss"], first_step).tolist()
                self.suggestion = suggest_lr(lrs, losses, divisor=self.divisor, edge_divisor=self.edge_divisor,
                                             lowest=self.lowest, highest=self.highest)  # fmt: skip
        self.seconds = time.perf_counter() - start
        chosen = self.suggestion.lr if self.suggestion.lr is not None else fallback
        self._resolve(trainer, pl_module, chosen, rebuild=True)
        if not trainer.is_global_zero:
            return
        what = f"{self.suggestion.reason}" if self.suggestion.lr is not None else f"{self.suggestion.reason}: {optimizer_name}'s recipe lr"
        cost = f"{len(losses)} steps, {self.seconds:.1f} s" if steps else "no steps"
        where = ""
        if self.plot and losses:
            out = Path(trainer.log_dir or trainer.default_root_dir)
            where = f"; curve: {plot_range_test(lrs, losses, self.suggestion, chosen, out / PLOT_FILE)}"
        print(f"lr auto: {chosen:.3g} ({what}; range test {cost}{where})", flush=True)

    def _resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule, lr: float, rebuild: bool) -> None:
        """Set the lr everywhere it is read; rebuild optimizer and schedule from it if they exist."""
        pl_module.optim.lr = lr
        if "optim" in pl_module.hparams:
            pl_module.hparams["optim"]["lr"] = lr  # checkpoints record the lr actually used
        if rebuild:
            trainer.strategy.setup_optimizers(trainer)
        self.chosen = lr
        self._pending = False
