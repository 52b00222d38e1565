"""The n-gram bag alone (no CNN) on a shared split: validation accuracy per epoch, one JSON line per seed.

Run from the repository root with ../shared/data beside it, e.g.
    .venv/bin/python benchmarks/probes/ngram_bag_alone.py --data thuc --lr 0.01 --seeds 1 2 3
The model is vdcnn_res's HashedNGramBag -> dropout -> linear, trained like fit's recipe (AdamW,
weight decay 0.05, 5 % warm-up + cosine, label smoothing 0.1, batch 32, 8 epochs, texts cut at
512), one thread. A probe behind docs/results.md §7 (the bag's learning rate); not part of the
harness, and it never reads a test split.
"""
import sys, time, json, math, argparse
import pandas as pd, numpy as np, torch
from torch import nn
from vdcnn_res.model.ngrams import HashedNGramBag
from vdcnn_res.data.tokenizer import build_tokenizer, encode

D = "../shared/data/"
def load(name):
    if name == "ag":
        r = lambda s: pd.read_csv(D+f"ag_news_7600/{s}.csv", header=None, names=["label","title","desc"])
        f = lambda df: ((df.title + " " + df.desc).tolist(), (df.label - 1).tolist())
        kind = "char"
    elif name == "db":
        r = lambda s: pd.read_csv(D+f"dbpedia14_14k/{s}.csv", header=None, names=["label","text"])
        f = lambda df: (df.text.tolist(), df.label.tolist()); kind = "char"
    else:
        folder = {"clinc": "clinc150", "thuc": "thucnews_14"}[name]
        r = lambda s: pd.read_csv(D+f"{folder}/{s}.tsv", sep="\t", keep_default_na=False)
        f = lambda df: (df.text.tolist(), df.label.tolist()); kind = "char" if name == "clinc" else "learned"
    tr, va = f(r("train")), f(r("valid"))
    if isinstance(tr[1][0], str):
        names = sorted(set(tr[1])); m = {n: i for i, n in enumerate(names)}
        tr = (tr[0], [m[x] for x in tr[1]]); va = (va[0], [m[x] for x in va[1]])
    tok = build_tokenizer(kind, tr[0], min_frequency=2) if kind == "learned" else build_tokenizer(kind)
    return tok, tr, va

def batches(ids, labels, bs, rng=None):
    idx = np.arange(len(ids)) if rng is None else rng.permutation(len(ids))
    for s in range(0, len(ids), bs):
        b = idx[s:s+bs]; L = max(1, max(len(ids[i]) for i in b))
        x = torch.zeros(len(b), L, dtype=torch.long)
        for j, i in enumerate(b): x[j, :len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
        yield x, torch.tensor([len(ids[i]) for i in b]), torch.tensor([labels[i] for i in b])

def run(a, data, seed):
    tok, tr, va = data
    torch.manual_seed(seed); rng = np.random.default_rng(seed)
    C = max(tr[1]) + 1
    tri, vai = encode(tok, tr[0], a.maxlen), encode(tok, va[0], a.maxlen)
    bag = HashedNGramBag(tuple(a.orders), a.buckets, a.dim)
    nn.init.normal_(bag.embedding.weight, std=a.init)
    head = nn.Sequential(nn.Dropout(a.dropout), nn.Linear(a.dim, C))
    nn.init.normal_(head[1].weight, std=0.01)
    params = list(bag.parameters()) + list(head.parameters())
    steps = a.epochs * math.ceil(len(tri) / 32)
    if a.opt == "adamw":
        opt = torch.optim.AdamW([{"params": bag.parameters(), "weight_decay": a.wd_emb}, {"params": head.parameters()}], lr=a.lr, weight_decay=a.wd)
    else:
        opt = torch.optim.SGD(params, lr=a.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s+1)/(0.05*steps)) * 0.5*(1+math.cos(math.pi*min(1, s/steps))))
    curve = []
    for ep in range(a.epochs):
        bag.train(); head.train()
        for x, l, y in batches(tri, tr[1], 32, rng):
            loss = nn.functional.cross_entropy(head(bag(x, l)), y, label_smoothing=a.ls)
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        bag.eval(); head.eval(); correct = 0
        with torch.no_grad():
            for x, l, y in batches(vai, va[1], 256):
                correct += (head(bag(x, l)).argmax(1) == y).sum().item()
        curve.append(round(100 * correct / len(vai), 2))
    return curve

p = argparse.ArgumentParser()
p.add_argument("--data", default="ag"); p.add_argument("--orders", type=int, nargs="+", default=[1,2,3,4,5])
p.add_argument("--buckets", type=int, default=262144); p.add_argument("--dim", type=int, default=64)
p.add_argument("--lr", type=float, default=1e-3); p.add_argument("--wd", type=float, default=0.05); p.add_argument("--wd_emb", type=float, default=0.05)
p.add_argument("--opt", default="adamw"); p.add_argument("--epochs", type=int, default=8); p.add_argument("--dropout", type=float, default=0.5)
p.add_argument("--init", type=float, default=0.05); p.add_argument("--ls", type=float, default=0.1); p.add_argument("--maxlen", type=int, default=512)
p.add_argument("--seeds", type=int, nargs="+", default=[1])
a = p.parse_args(); torch.set_num_threads(1)
data = load(a.data); t = time.time()
for s in a.seeds:
    c = run(a, data, s); print(json.dumps({"args": {k: v for k, v in vars(a).items() if k != "seeds"}, "seed": s, "curve": c, "best": max(c), "s": round(time.time() - t)}), flush=True)
