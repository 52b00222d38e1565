"""The CNN branch alone: its probabilities at the fused model's temperature, and at one fitted for it.

Run from the repository root, e.g.
    vdcnn-res calibrate --config configs/shared/ag_news_7600.yaml --ckpt_path <best.ckpt> \
        --branch_weights '{cnn: 1, ngrams: 0}' --out cnn.ckpt
    PYTHONPATH=benchmarks/probes .venv/bin/python benchmarks/probes/cnn_alone_calibration.py \
        --data ../shared/data/ag_news_7600 --ckpt <best.ckpt> --calibrated cnn.ckpt
One JSON line per way: test accuracy, NLL and ECE (15 bins) of the first checkpoint with its
branch weights set to CNN 1, bag 0 from Python (the temperature stays the one fitted for the
fused model), and of the checkpoint `calibrate --branch_weights` wrote. Both in float32.
"""
import argparse, json
import numpy as np, torch
from branch_logits import read  # the probe beside this file: TSV or Zhang et al. CSV, as labels
from vdcnn_res.inference.predictor import Predictor
from vdcnn_res.training.calibration import expected_calibration_error


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--calibrated", required=True)
    ap.add_argument("--label_offset", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    fused = Predictor.from_checkpoint(args.ckpt, bf16=False)
    fused.branch_weights = {"cnn": 1, "ngrams": 0}
    calibrated = Predictor.from_checkpoint(args.calibrated, bf16=False)
    texts, labels = read(args.data, "test", args.label_offset)
    gold = np.array([fused.label_names.index(label) for label in labels])
    for way, predictor in (("branch_weights set from Python", fused), ("calibrate --branch_weights", calibrated)):
        probs = predictor.predict_proba(texts)
        print(json.dumps({
            "way": way, "temperature": round(predictor.temperature, 4), "branch_weights": predictor.branch_weights,
            "test_acc": round(float(100 * (probs.argmax(1) == gold).mean()), 2),
            "test_nll": round(float(-np.log(probs[np.arange(len(gold)), gold]).mean()), 4),
            "test_ece_pct": round(100 * expected_calibration_error(torch.from_numpy(probs), torch.from_numpy(gold)), 2),
        }))


if __name__ == "__main__":
    main()
