"""Late fusion of a separately trained pure CNN with a default model's n-gram bag (issue 35).

Run from the repository root, e.g.
    .venv/bin/python benchmarks/probes/late_fusion.py --data ../shared/data/ag_news_7600 \
        --bag_ckpt <default best.ckpt> --cnn_ckpt <pure CNN best.ckpt>
The bag is the default checkpoint with its CNN branch weighted 0; the fused prediction is
(1 - w) log p_bag + w log p_cnn, with w chosen on the validation split from a grid (0, 0.05, ...,
0.5; ties to the smaller w). One JSON line: each model's test accuracy, w, the fused test
accuracy, the test accuracy at every w of the grid, and how often one model is right where the
other is wrong (what fusion could gain at most). It reads the test split: a probe behind
docs/results.md §14, not a way to choose a recipe.
"""
import argparse, json
import numpy as np, torch
from branch_logits import read  # the probe beside this file: TSV or Zhang et al. CSV, as labels
from vdcnn_res.inference.predictor import Predictor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--bag_ckpt", required=True)
    ap.add_argument("--cnn_ckpt", required=True)
    ap.add_argument("--label_offset", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    bag, cnn = Predictor.from_checkpoint(args.bag_ckpt), Predictor.from_checkpoint(args.cnn_ckpt)
    assert bag.label_names == cnn.label_names, "the two checkpoints predict different labels"
    with torch.no_grad():
        bag.model.branch_weights.copy_(torch.tensor([0.0, 1.0]))  # the bag alone
    index = {name: i for i, name in enumerate(bag.label_names)}
    logp, gold = {}, {}
    for split in ("valid", "test"):
        texts, labels = read(args.data, split, args.label_offset)
        gold[split] = np.array([index[l] for l in labels])
        logp[split] = [np.log(p.predict_proba(texts) + 1e-9) for p in (bag, cnn)]

    def acc(split: str, w: float) -> float:
        b, c = logp[split]
        return float(100 * (((1 - w) * b + w * c).argmax(1) == gold[split]).mean())

    grid = [round(w, 2) for w in np.arange(0, 0.501, 0.05)]
    w = max(grid, key=lambda w: (acc("valid", w), -w))
    bag_wrong = logp["test"][0].argmax(1) != gold["test"]
    cnn_wrong = logp["test"][1].argmax(1) != gold["test"]
    print(json.dumps({
        "bag_test": round(acc("test", 0.0), 2), "cnn_test": round(acc("test", 1.0), 2),
        "w_cnn": w, "fused_test": round(acc("test", w), 2),
        "test_by_w": {str(g): round(acc("test", g), 2) for g in grid},
        "bag_wrong_cnn_right": round(float(100 * (bag_wrong & ~cnn_wrong).mean()), 2),
        "bag_right_cnn_wrong": round(float(100 * (~bag_wrong & cnn_wrong).mean()), 2),
    }))


if __name__ == "__main__":
    main()
