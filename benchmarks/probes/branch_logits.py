"""What each branch of a CNN + n-gram-bag checkpoint predicts on its own (validation, and a sample of training).

Run from the repository root, e.g.
    .venv/bin/python benchmarks/probes/branch_logits.py --ckpt <best.ckpt> --data ../shared/data/clinc150
One JSON line per split: accuracy of the summed logits (what the model predicts), of the CNN's head
alone and of the bag's head alone, the shares of texts where one branch is right and the other
wrong (what any fusion of the two could gain over the bag at most), and the mean per-text std of
each branch's logits (which branch dominates the sum); with --fit_weights, also the validation accuracy of branch weights chosen on
the other half of the validation texts (docs/longdoc_plateau.md §12). A probe behind
docs/results.md §7; it never reads a test split.
"""
import argparse, json, os
import numpy as np, pandas as pd, torch
from vdcnn_res.inference.predictor import Predictor
from vdcnn_res.data.batching import texts_to_batches


def read(folder: str, split: str, label_offset: int = 1) -> tuple[list[str], list[str]]:
    """text<TAB>label TSV, or a Zhang et al. CSV (label - label_offset indexes classes.txt, then the
    text columns joined)."""
    if os.path.exists(f"{folder}/{split}.tsv"):
        df = pd.read_csv(f"{folder}/{split}.tsv", sep="\t", keep_default_na=False, dtype=str)
        return df.text.tolist(), df.label.tolist()
    classes = [c.strip() for c in open(f"{folder}/classes.txt", encoding="utf-8") if c.strip()]
    df = pd.read_csv(f"{folder}/{split}.csv", header=None, keep_default_na=False, dtype=str)
    texts = df.iloc[:, 1:].apply(lambda r: " ".join(r), axis=1).tolist()
    return texts, [classes[int(l) - label_offset] for l in df.iloc[:, 0]]


@torch.inference_mode()
def branches(p: Predictor, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    m = p.model
    cnn_out = np.zeros((len(texts), m.config.num_classes), np.float32)
    bag_out = np.zeros_like(cnn_out)
    for b in texts_to_batches(p.tokenizer, texts, max_length=p.max_length, batch_size=128):
        f = m.forward_features(b["input_ids"], b["lengths"])
        cnn, bag = f.split([m.config.num_features, m.config.ngram_dim], dim=1)
        cnn_out[b["index"].numpy()] = m.head(cnn).float().numpy()
        bag_out[b["index"].numpy()] = m.ngram_head(bag).float().numpy()
    return cnn_out, bag_out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data", required=True, help="a folder with train.tsv and valid.tsv (text<TAB>label)")
    ap.add_argument("--train_sample", type=int, default=3000)
    ap.add_argument("--splits", nargs="+", default=["train", "valid"], choices=["train", "valid"])
    ap.add_argument("--label_offset", type=int, default=1, help="CSV splits: the first class's number (DBpedia 14k: 0)")
    ap.add_argument("--fit_weights", action="store_true",
                    help="also: branch weights fitted on half the validation texts, scored on the other half (both ways)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    p = Predictor.from_checkpoint(a.ckpt, bf16=False)
    index = {n: i for i, n in enumerate(p.label_names)}
    for split in a.splits:
        texts, labels = read(a.data, split, a.label_offset)
        if split == "train":
            pick = np.random.default_rng(0).permutation(len(texts))[: a.train_sample]
            texts, labels = [texts[i] for i in pick], [labels[i] for i in pick]
        y = np.array([index[l] for l in labels])
        cnn, bag = branches(p, texts)
        share = lambda hits: round(float(hits.mean() * 100), 2)
        acc = lambda z: share(z.argmax(1) == y)
        row = {"split": split, "n": len(y), "joint": acc(cnn + bag), "cnn": acc(cnn), "bag": acc(bag),
               "bag_wrong_cnn_right": share((bag.argmax(1) != y) & (cnn.argmax(1) == y)),
               "bag_right_cnn_wrong": share((bag.argmax(1) == y) & (cnn.argmax(1) != y)),
               "cnn_logit_std": round(float(cnn.std(1).mean()), 2), "bag_logit_std": round(float(bag.std(1).mean()), 2)}
        if split == "valid" and a.fit_weights:
            row.update(cross_fitted_weights(cnn, bag, y))
        print(json.dumps(row))


def _nll(z: np.ndarray, y: np.ndarray) -> float:
    z = z - z.max(1, keepdims=True)
    return float((np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]).mean())


def cross_fitted_weights(cnn: np.ndarray, bag: np.ndarray, y: np.ndarray, folds: int = 2) -> dict:
    """Branch weights (w_cnn, w_bag) in [0, 3] fitted by NLL on one half of the validation texts and
    scored on the other half, both ways (seeded halves): what weights chosen on held-out data would give."""
    grid = np.round(np.arange(0, 3.01, 0.1), 2)
    part = np.random.default_rng(0).permutation(len(y)) % folds
    correct, chosen = 0, []
    for k in range(folds):
        fit, score = part != k, part == k
        best = min(((_nll(wc * cnn[fit] + wb * bag[fit], y[fit]), wc, wb) for wc in grid for wb in grid if wc or wb))
        _, wc, wb = best
        chosen.append([float(wc), float(wb)])
        correct += int(((wc * cnn[score] + wb * bag[score]).argmax(1) == y[score]).sum())
    return {"fitted": round(100 * correct / len(y), 2), "weights_cnn_bag": chosen}


if __name__ == "__main__":
    main()
