"""Per-character explanations of a prediction: integrated gradients on the character embeddings
and, with a hashed n-gram bag, on the bag's mean n-gram embedding too.

    from vdcnn_res import Predictor
    from vdcnn_res.inference.explain import explain, to_html
    predictor = Predictor.from_checkpoint("lightning_logs/version_0/checkpoints/last.ckpt")
    e = explain(predictor, "Stocks rallied after the Fed decision.")   # or label="World"
    e.label, e.top_k(2), e.attributions          # one score per character of e.text
    Path("explain.html").write_text(to_html([e]), encoding="utf-8")

Method: integrated gradients (Sundararajan et al., 2017) with Captum's
``LayerIntegratedGradients`` on the output of the embedding layer. The target is the log
probability of the label (log-softmax of the logits): unlike a raw logit it measures evidence
*for this label against the others*, and unlike the probability it does not saturate near 1.
The baseline is the same text with every character replaced by padding, i.e. a zero embedding
at every position, which is exactly what the model sees for padding. Attributions of a text's
positions then add up to ``log p(label | text) - log p(label | baseline)`` (up to the
integral's approximation error, reported as ``delta``). Occlusion would need one forward pass
per character (512 for a full text) against ``n_steps`` (50) forward and backward passes here,
and measures one character's removal in isolation; IG gives a complete account.

The n-gram bag (``ngram_orders``): its output, the mean m = (1/c) sum_j e_j of the embeddings
of the text's c n-grams, is integrated along the same path, from zero (no n-grams: the bag of
an empty text) to m, together with the character embeddings. Since m is linear in the e_j,
IG on every n-gram's embedding e_j (baseline zero) is exactly (e_j / c) . G, where G is the
integrated gradient at m; each n-gram's share is spread evenly over the n token positions it
covers and added to the CNN's attribution there. The attributions of the whole model then add
up to ``log p(label | text) - log p(label | padding for the CNN, no n-grams for the bag)``,
``delta`` is measured against that, and ``ngram_attribution`` says how much of the sum came
through the bag.

Characters and positions: each token id is mapped back to the characters it came from through
the tokenizer's offsets, so lower-casing that changes the length (``İ`` -> ``i̇``) and byte-level
tokenizers (several ids per character) give one score per character of the original text.
Characters the model never read (beyond ``max_length``) get NaN and are counted in
``n_cut``; characters outside the vocabulary (read as ``<unk>``) keep the attribution of the
``<unk>`` embedding at their position and are flagged in ``unknown``.
"""

from __future__ import annotations

import html
import math
import os
import re
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tokenizers import Tokenizer

from vdcnn_res.data.tokenizer import PAD_ID, UNK_ID, encode
from vdcnn_res.errors import UserError
from vdcnn_res.model import VDCNN

__all__ = ["Explanation", "PredictorLike", "explain", "require_captum", "to_html", "to_png"]

_SURROGATES = re.compile("[\ud800-\udfff]")


class PredictorLike(Protocol):
    """What `explain` uses of a :class:`~vdcnn_res.inference.predictor.Predictor` (not imported
    here, so that ``Predictor.explain`` can call this module without an import cycle)."""

    model: VDCNN
    tokenizer: Tokenizer
    label_names: list[str]
    max_length: int
    device: torch.device


def require_captum() -> None:
    """Raise a one-line UserError naming the extra when Captum is missing."""
    try:
        import captum.attr  # noqa: F401
    except ImportError:
        raise UserError("explanations need Captum: pip install 'vdcnn-res[explain]' (or pip install captum)") from None


@dataclass
class Explanation:
    """One text's attributions for one label.

    ``attributions[i]`` belongs to ``text[i]``: positive supports ``label``, negative speaks
    against it (log-probability units); NaN where the character was cut (beyond
    ``max_length``). ``probabilities`` are float32 softmax outputs in ``label_names`` order.
    """

    text: str
    label: str
    predicted: str
    label_names: list[str]
    probabilities: np.ndarray  # (n_classes,)
    attributions: np.ndarray  # (len(text),) float64, NaN where not read
    unknown: np.ndarray  # (len(text),) bool: read as <unk>
    n_cut: int  # characters beyond max_length, not read
    max_length: int
    delta: float  # sum(attributions) - (target(text) - target(baseline)): the approximation error
    n_steps: int
    ngram_attribution: float | None  # the part of sum(attributions) that came through the n-gram bag; None: no bag

    def top_k(self, k: int = 3) -> list[tuple[str, float]]:
        """The k most probable labels with their probabilities, most probable first."""
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(self.label_names[i], float(self.probabilities[i])) for i in order]

    def words(self) -> list[tuple[str, float]]:
        """(word, summed attribution) of each whitespace-separated word that was read, in text order."""
        out = []
        for m in re.finditer(r"\S+", self.text):
            scores = self.attributions[m.start() : m.end()]
            if np.isfinite(scores).any():
                out.append((m.group(), float(np.nansum(scores))))
        return out


def _label_index(label: str | int | None, names: list[str], predicted: int) -> int:
    if label is None:
        return predicted
    if isinstance(label, str) and label in names:
        return names.index(label)
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(names):
        return label
    shown = ", ".join(names) if len(names) <= 20 else ", ".join(names[:20]) + f", ... ({len(names)} in all)"
    raise UserError(f"unknown label {label!r}; the model's labels are: {shown}")


def explain(
    predictor: PredictorLike,
    text: str,
    label: str | int | None = None,
    *,
    n_steps: int = 50,
    internal_batch_size: int | None = 16,
) -> Explanation:
    """Per-character integrated-gradients attributions of ``text`` for ``label`` (default: the predicted one).

    ``predictor`` is a :class:`~vdcnn_res.inference.predictor.Predictor` (its model, tokenizer,
    label names, max_length and device are used; the computation is float32 whatever its bf16
    setting, since gradients need it). ``n_steps`` points approximate the path integral;
    ``internal_batch_size`` bounds how many of them run at once (memory). A text longer than
    ``max_length`` is explained as the model reads it: cut, the rest NaN. An empty text has
    nothing to attribute and is refused, as is an unknown label. A model with an n-gram bag has
    the bag's share attributed too (module docstring).
    """
    require_captum()
    from captum.attr import LayerIntegratedGradients

    if getattr(predictor, "is_series", False):
        raise UserError("explain attributes a prediction to characters: it takes a text model, not a series model")
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    if not text:
        raise UserError("cannot explain an empty text: it has no characters to attribute")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 2:
        raise UserError(f"n_steps must be an int >= 2, got {n_steps!r}")
    names = list(predictor.label_names)
    if label is not None:
        _label_index(label, names, 0)  # a bad label is refused before any work
    if _SURROGATES.search(text):  # only a Python string holds lone surrogates; explain what the model reads
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")

    tokenizer, model, device = predictor.tokenizer, predictor.model, predictor.device
    ids = encode(tokenizer, [text], predictor.max_length)[0]
    # Offsets come from encoding a prefix a little longer than what is kept (as `encode` does),
    # so a 1,000,000-character text costs as much as a short one.
    encoding = tokenizer.encode(text[: predictor.max_length + 16], add_special_tokens=False)
    if encoding.ids[: len(ids)] != ids:  # the two encodings disagree: a tokenizer we do not know
        raise UserError("this tokenizer's character offsets do not match its ids; explanations need a vdcnn-res tokenizer")
    offsets = encoding.offsets[: len(ids)]
    if not ids:  # e.g. characters a normalizer removes entirely
        raise UserError("cannot explain this text: the tokenizer gives it no ids (nothing for the model to read)")

    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    lengths = torch.tensor([len(ids)], dtype=torch.long, device=device)
    baseline = torch.full_like(input_ids, PAD_ID)
    bag = getattr(model, "ngrams", None)

    def log_prob(ids_: torch.Tensor, lengths_: torch.Tensor) -> torch.Tensor:
        return model(ids_, lengths_).float().log_softmax(-1)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            with torch.no_grad():
                logits = model(input_ids, lengths).float()
            probs = logits.softmax(-1)[0].cpu().numpy()
            predicted = int(np.argmax(probs))
            target = _label_index(label, names, predicted)

            common = {"target": target, "n_steps": n_steps, "internal_batch_size": internal_batch_size}
            if bag is None:
                attr = LayerIntegratedGradients(log_prob, model.embedding).attribute(
                    input_ids, baselines=baseline, additional_forward_args=(lengths,), **common
                )
                per_token_t = attr.sum(dim=-1)[0, : len(ids)]  # (n_ids,)
                ngram_share = None
            else:
                # Captum maps the baseline *input* through the model for each layer's baseline
                # output: padding ids embed as zeros (the CNN's baseline) and a length of 0 gives
                # the bag no n-grams (a zero mean). The path runs on the text's own ids and lengths
                # with only the two layers' outputs interpolated. The integrated gradients come
                # back unscaled (multiply_by_inputs=False): the bag's is split over its n-grams.
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Multiple layers provided")  # independent layers
                    ig = LayerIntegratedGradients(log_prob, [model.embedding, bag], multiply_by_inputs=False)
                grads = ig.attribute((input_ids, lengths), baselines=(baseline, torch.zeros_like(lengths)), **common)
                with torch.no_grad():
                    embedded = model.embedding(input_ids)  # (1, n_ids, E); min_length padding embeds as 0
                    per_token_t = (grads[0][:, : len(ids)] * embedded).sum(dim=-1)[0]  # (n_ids,)
                    ngram_share = _ngram_attribution(bag, input_ids, lengths, grads[1][0])
            with torch.no_grad():
                at_text = float(log_prob(input_ids, lengths)[0, target])
                at_baseline = float(_baseline_log_prob(log_prob, bag, baseline, lengths)[0, target])
    finally:
        model.train(was_training)
    per_token = per_token_t.detach().double().cpu().numpy()
    ngram_total = None
    if ngram_share is not None:
        per_token = per_token + ngram_share
        ngram_total = float(ngram_share.sum())
    delta = float(per_token.sum()) - (at_text - at_baseline)

    scores = np.full(len(text), np.nan)
    unknown = np.zeros(len(text), dtype=bool)
    for j, (start, end) in enumerate(offsets):
        if end <= start:
            continue
        span = slice(start, end)
        share = per_token[j] / (end - start)
        scores[span] = np.where(np.isnan(scores[span]), share, scores[span] + share)
        if ids[j] == UNK_ID:
            unknown[span] = True
    n_read = max((end for _, end in offsets), default=0)
    return Explanation(
        text=text,
        label=names[target],
        predicted=names[predicted],
        label_names=names,
        probabilities=probs,
        attributions=scores,
        unknown=unknown,
        n_cut=len(text) - n_read,
        max_length=predictor.max_length,
        delta=delta,
        n_steps=n_steps,
        ngram_attribution=ngram_total,
    )


def _ngram_attribution(bag: torch.nn.Module, input_ids: torch.Tensor, lengths: torch.Tensor, grad: torch.Tensor) -> np.ndarray:
    """Per token position (n_ids,), float64: each n-gram's IG share (e_j / c) . grad, spread evenly
    over the n positions it covers; ``grad`` (dim,) is the integrated gradient at the bag's mean."""
    per_token = np.zeros(input_ids.shape[1])
    orders = bag.ngram_rows(input_ids, lengths)
    count = max(sum(int(valid.sum()) for _, _, valid in orders), 1)  # the bag's divisor
    g = grad.detach().double()
    for n, rows, valid in orders:
        share = (bag.embedding(rows)[0].double() @ g) * valid[0] / count  # (max(L - n + 1, 0),): n-gram from i
        spread = (share / n).cpu().numpy()
        for k in range(n):  # the n-gram from i covers positions i .. i + n - 1
            per_token[k : k + len(spread)] += spread
    return per_token


def _baseline_log_prob(
    log_prob: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    bag: torch.nn.Module | None,
    baseline: torch.Tensor,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """log p at the start of the path: padding for the CNN (same lengths), no n-grams for the bag."""
    if bag is None:
        return log_prob(baseline, lengths)
    handle = bag.register_forward_hook(lambda module, args, output: torch.zeros_like(output))
    try:
        return log_prob(baseline, lengths)
    finally:
        handle.remove()


# ----------------------------------------------------------------------------- display

_CUT_SHOWN = 200  # unread characters shown (greyed) after the cut; the rest are counted


def _visible(ch: str) -> str:
    """A character as it can be shown: controls (but newline and tab) as their Unicode pictures."""
    code = ord(ch)
    if ch in "\n\t":
        return ch
    if code < 0x20:
        return chr(0x2400 + code)
    if code == 0x7F:
        return "\u2421"
    if unicodedata.category(ch) in ("Cs", "Co", "Cn") or code in (0xFEFF,):
        return "\ufffd"
    return ch


def _scale(e: Explanation) -> float:
    finite = np.abs(e.attributions[np.isfinite(e.attributions)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def _rgba(score: float, scale: float) -> str:
    alpha = min(1.0, abs(score) / scale)
    rgb = "34, 139, 34" if score >= 0 else "214, 39, 40"  # green for, red against
    return f"rgba({rgb}, {alpha:.3f})"


def _text_html(e: Explanation) -> str:
    scale = _scale(e)
    parts = []
    n_read = len(e.text) - e.n_cut
    for i, ch in enumerate(e.text[:n_read]):
        score = e.attributions[i]
        shown = html.escape(_visible(ch), quote=True)
        if not math.isfinite(score):
            parts.append(shown)
            continue
        note = " (not in the vocabulary: read as &lt;unk&gt;)" if e.unknown[i] else ""
        cls = ' class="unk"' if e.unknown[i] else ""
        parts.append(f'<span{cls} style="background:{_rgba(score, scale)}" title="{score:+.4f}{note}">{shown}</span>')
    if e.n_cut:
        tail = html.escape("".join(_visible(c) for c in e.text[n_read : n_read + _CUT_SHOWN]), quote=True)
        more = e.n_cut - min(e.n_cut, _CUT_SHOWN)
        parts.append(
            f'<span class="cut" title="not read: the model reads the first {e.max_length} units">{tail}</span>'
            + (f'<span class="note"> … {more:,} more characters not read</span>' if more else "")
        )
    return "".join(parts)


def to_html(explanations: Sequence[Explanation], title: str = "vdcnn-res explanations", top_k: int = 3) -> str:
    """A self-contained HTML page: each text with its characters shaded by attribution, and its top labels.

    Every piece of user data (texts, label names) is HTML-escaped; control characters are shown
    as their Unicode control pictures. Green supports the explained label, red speaks against
    it; the shade is relative to the text's largest |attribution| (hover a character for its value).
    """
    items = []
    for n, e in enumerate(explanations, 1):
        probs = ", ".join(f"{html.escape(name)} {100 * p:.1f} %" for name, p in e.top_k(top_k))
        which = "predicted" if e.label == e.predicted else f"given (predicted: {html.escape(e.predicted)})"
        notes = [f"IG, {e.n_steps} steps, completeness error {e.delta:+.3g}"]
        if e.n_cut:
            notes.append(f"{e.n_cut:,} characters beyond max_length={e.max_length} not read (grey)")
        if e.unknown.any():
            notes.append(f"{int(e.unknown.sum())} characters outside the vocabulary (dotted)")
        if e.ngram_attribution is not None:
            total = float(np.nansum(e.attributions))
            notes.append(f"of the total attribution {total:+.3g}, {e.ngram_attribution:+.3g} came through the n-gram bag")
        items.append(
            f'<section><h2>{n}. {html.escape(e.label)} <small>({which} label, p = {100 * e.probabilities[e.label_names.index(e.label)]:.1f} %)</small></h2>\n'
            f'<p class="probs">top labels: {probs}</p>\n<div class="text">{_text_html(e)}</div>\n'
            f'<p class="note">{html.escape("; ".join(notes))}</p></section>'
        )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>\n"
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}\n"
        ".text{font-family:monospace;white-space:pre-wrap;word-break:break-all;line-height:1.6;"
        "border:1px solid #ccc;padding:.6em}\n"
        ".unk{text-decoration:underline dotted}.cut{color:#999}.note{color:#666;font-size:.9em}\n"
        "h2 small{font-weight:normal;color:#555}\n</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p class=\"note\">Each character is shaded by its integrated-gradients "
        "attribution to the label's log-probability: green for, red against, relative to the text's largest "
        "(hover for the value).</p>\n" + "\n".join(items) + "\n</body></html>\n"
    )


def _wrap(cells: list[tuple[str, float]], width: int) -> list[list[tuple[str, float]]]:
    """Lines of at most ``width`` cells, broken after the last space that fits (else mid-word)."""
    lines, start = [], 0
    while start < len(cells):
        end = min(start + width, len(cells))
        if end < len(cells):
            spaces = [i for i in range(start, end) if cells[i][0] == " "]
            if spaces and spaces[-1] > start:
                end = spaces[-1] + 1
        lines.append(cells[start:end])
        start = end
    return lines


def to_png(e: Explanation, path: str | os.PathLike[str], width: int = 80, max_lines: int = 12) -> Path:
    """A picture of one explanation (for a README): shaded characters in a monospace grid, top labels above."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n_read = len(e.text) - e.n_cut
    cells = [(_visible(c) if c not in "\n\t" else " ", e.attributions[i]) for i, c in enumerate(e.text[:n_read])]
    width = max(1, min(width, len(cells)))
    lines = _wrap(cells, width)[:max_lines]
    scale = _scale(e)
    char_w, char_h = 0.11, 0.24
    fig = plt.figure(figsize=(width * char_w + 0.4, len(lines) * char_h + 0.75))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-1, width + 1)
    ax.set_ylim(len(lines) + 2.6, -0.4)
    ax.axis("off")
    probs = ", ".join(f"{name} {100 * p:.0f} %" for name, p in e.top_k(3))
    ax.text(0, 0.3, f"{e.label}  (top labels: {probs})", fontsize=10, va="center", fontweight="bold")
    ax.text(0, 1.1, "green: for the label, red: against (integrated gradients)", fontsize=8, va="center", color="#555")
    for row, line in enumerate(lines):
        y = row + 2
        for col, (ch, score) in enumerate(line):
            if math.isfinite(score) and score != 0:
                alpha = min(1.0, abs(score) / scale)
                color = (0.13, 0.55, 0.13, alpha) if score > 0 else (0.84, 0.15, 0.16, alpha)
                ax.add_patch(Rectangle((col - 0.5, y - 0.5), 1, 1, color=color, lw=0))
            ax.text(col, y, ch, family="monospace", fontsize=9, ha="center", va="center")
    if sum(map(len, lines)) < len(cells) or e.n_cut:
        ax.text(0, len(lines) + 2.1, "…", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, format="png")
    plt.close(fig)
    return path
