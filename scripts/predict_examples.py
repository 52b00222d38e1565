"""Predict a few texts from Python with a checkpoint written by `vdcnn-res fit`.

    .venv/bin/python scripts/predict_examples.py lightning_logs/version_0/checkpoints/best-....ckpt
"""

import sys

from vdcnn_res import Predictor

TEXTS = [
    "Stocks fell sharply on Wall Street after the central bank raised interest rates.",
    "The striker scored twice as the home team won the championship final.",
    "Researchers unveiled a faster chip that could make laptops run cooler.",
    "Rebels and government troops agreed to a ceasefire after weeks of fighting.",
]

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    predictor = Predictor.from_checkpoint(sys.argv[1])
    for text, result in zip(TEXTS, predictor.predict(TEXTS, top_k=2)):
        ranked = ", ".join(f"{label} {prob:.2f}" for label, prob in result["top_k"])
        print(f"{result['label']:>10}  ({ranked})  {text}")
