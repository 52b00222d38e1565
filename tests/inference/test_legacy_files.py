"""Files written by vdcnn-res 0.1.0 (before the package was split into model/data/training/
inference/cli) load and predict exactly as they did then.

tests/fixtures/legacy_0_1_0 was made once by `make_fixture.py` beside it, run on commit bf9b4bc:
a 3-step run on the bundled sample, its last.ckpt, its exported folder and the float32
probabilities that code gave for four texts.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vdcnn_res import Predictor
from vdcnn_res.inference.model_files import read_checkpoint
from vdcnn_res.training.module import VDCNNClassifier

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_0_1_0"
EXPECTED = json.loads((LEGACY / "expected.json").read_text(encoding="utf-8"))

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("load", [lambda: Predictor.from_checkpoint(LEGACY / "tiny.ckpt", bf16=False),
                                  lambda: Predictor.from_pretrained(LEGACY / "export", bf16=False)],
                         ids=["checkpoint", "exported folder"])
def test_old_files_predict_identically(load):
    predictor = load()
    assert predictor.label_names == ["World", "Sports", "Business", "Sci/Tech"]
    np.testing.assert_allclose(predictor.predict_proba(EXPECTED["texts"]), EXPECTED["probs"], rtol=0, atol=1e-6)


def test_old_checkpoint_weights_are_renamed_on_load():
    """0.1.0 kept projection shortcuts under `projection.*`; they load into `shortcut.*`."""
    checkpoint = torch.load(LEGACY / "tiny.ckpt", weights_only=True)
    assert any(".projection." in k for k in checkpoint["state_dict"])
    module = VDCNNClassifier(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])  # strict: every old key found its new name
    loaded = read_checkpoint(LEGACY / "tiny.ckpt").model
    for name, value in module.model.state_dict().items():
        torch.testing.assert_close(value, loaded.state_dict()[name])


def test_an_old_checkpoint_exports_with_a_model_card_and_predicts_identically(tmp_path):
    from huggingface_hub import ModelCard

    from vdcnn_res.cli import main

    main(["export", "--ckpt_path", str(LEGACY / "tiny.ckpt"), "--out_dir", str(tmp_path / "m")])
    predictor = Predictor.from_pretrained(tmp_path / "m", bf16=False)
    np.testing.assert_allclose(predictor.predict_proba(EXPECTED["texts"]), EXPECTED["probs"], rtol=0, atol=1e-6)
    card = ModelCard.load(tmp_path / "m" / "README.md")
    assert card.data.label_names == ["World", "Sports", "Business", "Sci/Tech"] and card.data.library_name == "vdcnn-res"
    assert "Trained on the file `data/ag_news_sample/train.csv`" in card.text  # 0.1.0 recorded its training file too
