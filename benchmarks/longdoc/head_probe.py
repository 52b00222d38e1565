"""Forward/one-step probes of the VDCNN head on a data set (issue 20), plain PyTorch, one thread.

    python benchmarks/longdoc/head_probe.py /tmp/longdoc/p350j3/train.tsv [--head-norm batch] [--ckpt X.ckpt]
    python benchmarks/longdoc/head_probe.py agnews        # ../shared/data/ag_news_7600/train.csv

At initialisation (seed --seed) on --batches random batches of 32 (each padded to its longest
text, texts cut at 512 characters, as the bucketed loader does for long texts) it prints:
- the k-max features fed to fc1: mean, between-text std (std over the batch, averaged over
  the 4096 features), and the share of their energy in the batch-mean vector ("common mode");
- fc1 pre-activations: mean, std, share of units dead for the whole batch;
- what k-max selects: share of the 8 selected stage-4 positions per channel that lie inside
  the class-neutral prefix (position p covers characters 8p..8p+7), from *_signal_start.txt;
- then --steps AdamW steps (lr warm-up as in the recipe: --lr * (t+1)/--warmup, wd 0.05,
  label smoothing 0.1) on fresh batches, printing per step the loss, the mean |change| of
  fc1 pre-activations on a fixed probe batch, lr * mean sum of features (the largest shift
  a sign-like Adam step can give one unit), and the dead share.
With --ckpt the model is a trained checkpoint (no steps unless asked).
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from vdcnn_res.data.tokenizer import build_tokenizer, encode
from vdcnn_res.model import ModelConfig, build_model
from vdcnn_res.model.layers import padding_mask
from vdcnn_res.training.optim import OptimConfig, build_optimizer

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def load(source: str):
    if source == "agnews":
        rows = list(csv.reader(open(DATA / "ag_news_7600" / "train.csv", newline="", encoding="utf-8")))
        texts, labels = [f"{r[1]} {r[2]}" for r in rows], [int(r[0]) - 1 for r in rows]
        return texts, labels, None
    rows = list(csv.reader(open(source, newline="", encoding="utf-8"), delimiter="\t"))[1:]
    names = sorted({r[1] for r in rows})
    starts_file = Path(source).with_name(Path(source).stem + "_signal_start.txt")
    starts = [int(x) for x in starts_file.read_text().split()] if starts_file.exists() else None
    return [r[0] for r in rows], [names.index(r[1]) for r in rows], starts


def batch(ids, idx):
    seqs = [ids[i] for i in idx]
    L = max(len(s) for s in seqs)
    x = torch.zeros(len(seqs), L, dtype=torch.long)
    for j, s in enumerate(seqs):
        x[j, : len(s)] = torch.tensor(s)
    return x, torch.tensor([len(s) for s in seqs])


def stage4(model, x, lengths):
    """The last stage's output and its padding mask (what the k-max head pools)."""
    x, lengths = model._prepare(x, lengths)
    pad = padding_mask(lengths, x.shape[1])
    h = model.stem(model.embedding(x).transpose(1, 2).mul(~pad)).mul(~pad)
    for stage in model.stages:
        h, lengths, pad = stage(h, lengths, pad)
    return h, pad


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("source")
    p.add_argument("--head-norm", default="none")
    p.add_argument("--ckpt")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=12)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    a = p.parse_args()
    torch.set_num_threads(1)
    texts, labels, starts = load(a.source)
    tok = build_tokenizer("char")
    ids = encode(tok, texts, 512)
    C = max(labels) + 1
    torch.manual_seed(a.seed)
    if a.ckpt:
        ck = torch.load(a.ckpt, map_location="cpu", weights_only=True)
        model = build_model(ModelConfig(**ck["hyper_parameters"]["arch"]))
        model.load_state_dict({k[6:]: v for k, v in ck["state_dict"].items() if k.startswith("model.")})
    else:
        model = build_model(ModelConfig(num_classes=C, vocab_size=tok.get_vocab_size(), head_norm=a.head_norm))
    model.train()
    rng = random.Random(a.seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    batches = [order[i * 32:(i + 1) * 32] for i in range(a.batches + a.steps)]
    print(f"{a.source}: {len(texts)} texts, {C} classes, median length {sorted(map(len, texts))[len(texts) // 2]} chars")

    with torch.no_grad():
        for bi, idx in enumerate(batches[: a.batches]):
            x, n = batch(ids, idx)
            h, pad = stage4(model, x, n)
            feats = model.pool(h, pad).flatten(1)  # (B, 4096)
            inp = model.head.norm(feats) if hasattr(model.head, "norm") else feats
            pre = model.head.fc1(inp)
            mu = feats.mean(0)
            common = float(mu.pow(2).sum() / feats.pow(2).sum(1).mean())
            msg = (f"batch {bi}: len {x.shape[1]} | features mean {feats.mean():.3f} between-text std {feats.std(0).mean():.3f} "
                   f"common-mode energy {100 * common:.1f}% | fc1 pre mean {pre.mean():.2f} std {pre.std():.2f} "
                   f"dead {100 * float((pre <= 0).all(0).float().mean()):.1f}%")
            if starts is not None:
                # positions selected by the order-preserving k-max (same rule as kmax_pool1d)
                sel = h.masked_fill(pad, torch.finfo(h.dtype).min).sort(dim=-1, descending=True, stable=True).indices[..., :8]
                st = torch.tensor([starts[i] for i in idx]).view(-1, 1, 1)
                in_prefix = (sel * 8 + 7 < st).float().mean()
                valid = (~pad).sum(-1).float().mean()
                prefix_share = (st.squeeze() / 8).clamp(max=float(valid)).mean() / valid
                msg += f" | k-max picks in prefix {100 * float(in_prefix):.1f}% (prefix = {100 * float(prefix_share):.1f}% of positions)"
            print(msg)

    if a.steps:
        model.train()
        opt = build_optimizer(model, OptimConfig(lr=a.lr, weight_decay=0.05))
        xp, npb = batch(ids, batches[0])

        def fc1_pre():
            with torch.no_grad():
                f = model.forward_features(xp, npb)
                inp = model.head.norm(f) if hasattr(model.head, "norm") else f
                return f, model.head.fc1(inp)

        f0, pre0 = fc1_pre()
        for t in range(a.steps):
            lr = a.lr * min(1.0, (t + 1) / a.warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            x, n = batch(ids, batches[a.batches + t])
            y = torch.tensor([labels[i] for i in batches[a.batches + t]])
            loss = F.cross_entropy(model(x, n).float(), y, label_smoothing=a.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            f1, pre1 = fc1_pre()
            print(f"step {t}: lr {lr:.2e} loss {loss.item():.3f} | mean |d fc1 pre| {(pre1 - pre0).abs().mean():.3f} "
                  f"(lr * mean sum of fc1 inputs {lr * f0.sum(1).mean():.2f}) | fc1 pre mean {pre1.mean():.2f} "
                  f"dead {100 * float((pre1 <= 0).all(0).float().mean()):.1f}%")
            f0, pre0 = f1, pre1


if __name__ == "__main__":
    main()
