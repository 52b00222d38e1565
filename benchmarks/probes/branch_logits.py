"""What each branch of a CNN + n-gram-bag checkpoint predicts on its own (validation, and a sample of training).

Run from the repository root, e.g.
    .venv/bin/python benchmarks/probes/branch_logits.py --ckpt <best.ckpt> --data ../shared/data/clinc150
One JSON line per split: accuracy of the summed logits (what the model predicts), of the CNN's head
alone and of the bag's head alone, and the mean per-text std of each branch's logits (which branch
dominates the sum). A probe behind docs/results.md §7; it never reads a test split.
"""
import argparse, json, os
import numpy as np, pandas as pd, torch
from vdcnn_res.inference.predictor import Predictor
from vdcnn_res.data.batching import texts_to_batches


def read(folder: str, split: str) -> tuple[list[str], list[str]]:
    """text<TAB>label TSV, or a Zhang et al. CSV (1-based label, then text columns joined) with classes.txt."""
    if os.path.exists(f"{folder}/{split}.tsv"):
        df = pd.read_csv(f"{folder}/{split}.tsv", sep="\t", keep_default_na=False, dtype=str)
        return df.text.tolist(), df.label.tolist()
    classes = [c.strip() for c in open(f"{folder}/classes.txt", encoding="utf-8") if c.strip()]
    df = pd.read_csv(f"{folder}/{split}.csv", header=None, keep_default_na=False, dtype=str)
    texts = df.iloc[:, 1:].apply(lambda r: " ".join(r), axis=1).tolist()
    return texts, [classes[int(l) - 1] for l in df.iloc[:, 0]]


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
    a = ap.parse_args()
    torch.set_num_threads(1)
    p = Predictor.from_checkpoint(a.ckpt, bf16=False)
    index = {n: i for i, n in enumerate(p.label_names)}
    for split in ("train", "valid"):
        texts, labels = read(a.data, split)
        if split == "train":
            pick = np.random.default_rng(0).permutation(len(texts))[: a.train_sample]
            texts, labels = [texts[i] for i in pick], [labels[i] for i in pick]
        y = np.array([index[l] for l in labels])
        cnn, bag = branches(p, texts)
        acc = lambda z: round(float((z.argmax(1) == y).mean() * 100), 2)
        print(json.dumps({"split": split, "n": len(y), "joint": acc(cnn + bag), "cnn": acc(cnn), "bag": acc(bag),
                          "cnn_logit_std": round(float(cnn.std(1).mean()), 2), "bag_logit_std": round(float(bag.std(1).mean()), 2)}))


if __name__ == "__main__":
    main()
