"""The model card (README.md) of an exported folder: the Hub's YAML metadata and a short text,
written from what the model, its checkpoint and its run know; nothing typed by hand.

    card = build_model_card(loaded, checkpoint, ckpt_path)   # huggingface_hub.ModelCard
    card.save(out_dir / "README.md")

Sources, each used when present:
- the model (every card): task, labels, architecture, parameters, max_length, calibration
  temperature and branch weights, multi-label thresholds;
- the checkpoint (`vdcnn-res export`): the training data (``data.hub_dataset`` or the
  ``data.train`` file), training steps and epochs, the calibration fitted on the validation split;
- the run: the newest ``vdcnn-res test`` of that checkpoint (``<run>/test/<checkpoint name>*/``,
  its TensorBoard scalars, config.yaml and confusion matrix): test accuracy, macro-F1, NLL and ECE,
  and how many texts of which file they were measured on. Without a test run the card says so.

The metadata follows the Hub's model card specification (``library_name: vdcnn-res``,
``pipeline_tag: text-classification`` for text, ``tags``, ``datasets`` for Hub datasets,
``language`` when given, ``model-index`` with the test results) plus ``label_names`` and
``calibration``; ``ModelCard.load`` reads it back.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from vdcnn_res.data.series import SeriesPreprocessing
from vdcnn_res.inference.model_files import LoadedModel

__all__ = ["build_model_card", "read_test_run"]

_MULTICLASS_METRICS = {"test/acc": "accuracy", "test/f1_macro": "f1"}
_MULTILABEL_METRICS = {"test/subset_acc": "accuracy", "test/f1_micro": "f1", "test/f1_macro": "f1"}


def read_test_run(ckpt_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The newest `vdcnn-res test` of this checkpoint, from its run folder: ``{"metrics": {tag: value},
    "test_file": str | None, "texts": int | None, "folder": str}``; None when there is none."""
    ckpt = Path(ckpt_path).resolve()
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    folders = [f for f in (run / "test").glob(f"{ckpt.stem}*") if f.is_dir() and any(f.glob("events.out.tfevents.*"))]
    folders = [f for f in folders if f.name == ckpt.stem or f.name.removeprefix(ckpt.stem + "-").isdigit()]
    if not folders:
        return None
    folder = max(folders, key=lambda f: f.stat().st_mtime)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    metrics = {tag: float(events.Scalars(tag)[-1].value) for tag in events.Tags().get("scalars", []) if tag.startswith("test/")}
    if not metrics:
        return None
    test_file = None
    if (folder / "config.yaml").is_file():
        import yaml

        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
        data = config.get("data") or {}
        test_file = data.get("test") or (data.get("hub_dataset") and f"{data['hub_dataset']} (test split)")
    texts = None
    if (folder / "confusion_matrix_test.csv").is_file():
        with open(folder / "confusion_matrix_test.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))[1:]
        texts = sum(int(v) for row in rows for v in row[1:])
    return {"metrics": metrics, "test_file": test_file, "texts": texts, "folder": str(folder)}


def _training_data(data: dict[str, Any]) -> tuple[str | None, list[str]]:
    """(what the model was trained on, Hub dataset ids for the metadata)."""
    if data.get("hub_dataset"):
        name = str(data["hub_dataset"]) + (f" ({data['hub_config']})" if data.get("hub_config") else "")
        return f"the Hugging Face dataset `{name}`", [str(data["hub_dataset"])]
    if data.get("train"):
        return f"the file `{data['train']}`", []
    return None, []


def build_model_card(
    loaded: LoadedModel,
    checkpoint: dict[str, Any] | None = None,
    ckpt_path: str | os.PathLike[str] | None = None,
    language: list[str] | None = None,
    name: str | None = None,
) -> ModelCard:
    """The card of ``loaded``: from the model alone, or with its checkpoint (training data,
    validation calibration) and, given ``ckpt_path``, the newest test run of that checkpoint.
    ``name`` is the model's name in the card (a Hub id or the folder's name)."""
    model, labels = loaded.model, loaded.label_names
    series = isinstance(loaded.tokenizer, SeriesPreprocessing)
    multilabel = loaded.thresholds is not None
    checkpoint = checkpoint or {}
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    trained_on, hub_datasets = _training_data(data)
    test = read_test_run(ckpt_path) if ckpt_path is not None else None
    name = name or "vdcnn-res model"
    kind = "time-series-classification" if series else "text-classification"
    temperature = float(model.temperature)
    weights = [float(w) for w in model.branch_weights.tolist()]

    tags = ["vdcnn-res", "vdcnn", kind, "safetensors"]
    if multilabel:
        tags.append("multi-label-classification")
    if not series and data.get("tokenizer"):
        tags.append(f"{data['tokenizer']}-level" if data["tokenizer"] in ("char", "byte") else str(data["tokenizer"]))
    eval_results = None
    if test is not None:
        chosen = _MULTILABEL_METRICS if multilabel else _MULTICLASS_METRICS
        dataset = hub_datasets[0] if hub_datasets else (test["test_file"] or "test split")
        eval_results = [
            EvalResult(task_type=kind, dataset_type=dataset, dataset_name=test["test_file"] or dataset, dataset_split="test",
                       metric_type=metric, metric_name=tag.removeprefix("test/"), metric_value=round(test["metrics"][tag], 4))
            for tag, metric in chosen.items() if tag in test["metrics"]
        ] or None
    calibration = {"temperature": round(temperature, 4)}
    fitted = checkpoint.get("calibration") if isinstance(checkpoint.get("calibration"), dict) else {}
    if "temperature" in fitted:
        calibration.update(fitted_on_validation_texts=fitted.get("texts"),
                           validation_ece_before=round(fitted["ece_before"], 4), validation_ece_after=round(fitted["ece_after"], 4))
    data_card = ModelCardData(
        library_name="vdcnn-res",
        pipeline_tag=None if series else "text-classification",
        tags=tags,
        language=language or None,
        datasets=hub_datasets or None,
        model_name=name if eval_results else None,
        eval_results=eval_results,
        label_names=list(labels),
        calibration=calibration,
    )
    body = _body(loaded, name, series, multilabel, data, trained_on, checkpoint, test, temperature, weights, fitted)
    return ModelCard(f"---\n{data_card.to_yaml()}\n---\n{body}")


def _body(loaded: LoadedModel, name: str, series: bool, multilabel: bool, data: dict[str, Any], trained_on: str | None,
          checkpoint: dict[str, Any], test: dict[str, Any] | None, temperature: float, weights: list[float],
          fitted: dict[str, Any]) -> str:
    model, labels, config = loaded.model, loaded.label_names, loaded.model.config
    unit = "series" if series else "texts"
    params = sum(p.numel() for p in model.parameters())
    bag = f", plus a bag of hashed character n-grams (orders {list(config.ngram_orders)}, {config.ngram_buckets} buckets)" if config.ngram_orders else ""
    lines = [
        f"# {name}",
        "",
        f"A very deep residual 1D CNN ({'multi-label' if multilabel else 'single-label'} "
        f"{'time-series' if series else 'text'} classifier, depth {config.depth}, "
        f"{'with' if config.shortcut else 'without'} shortcuts{bag}) trained with "
        f"vdcnn-res: {params:,} parameters, {len(labels)} labels.",
        "",
        "## Use",
        "",
        "```python",
        "from vdcnn_res import Predictor",
        "",
        f'predictor = Predictor.from_pretrained("{name}")  '
        + ("# from the Hub (or its local cache)" if "/" in name else "# the path of this folder"),
        "predictor.predict(" + ("series_array" if series else '"a text to classify"') + ", top_k=2)",
        "```",
        "",
        "The files are safetensors and JSON only (model.safetensors, config.json"
        + ("" if series else ", tokenizer.json") + "); nothing is unpickled when the model loads.",
        "",
        "## Labels",
        "",
        ", ".join(f"`{label}`" for label in labels),
    ]
    if multilabel:
        lines += ["", "Decision thresholds per label (tuned on the validation split): "
                  + ", ".join(f"`{label}` {t:.2f}" for label, t in zip(labels, loaded.thresholds or []))]
    lines += ["", "## Training", ""]
    if trained_on:
        steps = checkpoint.get("global_step")
        lines.append(f"Trained on {trained_on}" + (f" ({steps} optimizer steps)" if steps else "")
                     + (f", validated on `{data['valid']}`" if data.get("valid") else "") + ".")
    else:
        lines.append("The training data is not recorded with this model (it was saved without its checkpoint).")
    if not series:
        lines.append(f"Input: {data.get('tokenizer', 'the tokenizer in tokenizer.json')} tokens, at most {loaded.max_length} per text "
                     "(longer texts are cut).")
    lines += ["", "## Evaluation", ""]
    if test is not None:
        m = test["metrics"]
        where = f"{test['texts']} {unit}" if test["texts"] else unit
        where += f" of `{test['test_file']}`" if test["test_file"] else ""
        rows = [(k, m[k]) for k in ("test/acc", "test/subset_acc", "test/f1_macro", "test/f1_micro", "test/nll", "test/ece") if k in m]
        lines += [f"`vdcnn-res test` on {where}:", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k.removeprefix('test/')} | {v:.4f} |" for k, v in rows]
    else:
        lines.append("No test run is recorded for this checkpoint: `vdcnn-res test --ckpt_path CKPT --data.test FILE`, then "
                     "export again, puts its results here.")
    lines += ["", "## Calibration", ""]
    if temperature != 1.0:
        line = f"Probabilities are divided by a temperature of {temperature:.3f}"
        if "temperature" in fitted:
            line += (f", fitted on {fitted.get('texts')} validation {unit} (ECE {100 * fitted['ece_before']:.2f} % -> "
                     f"{100 * fitted['ece_after']:.2f} %)")
        lines.append(line + "; the temperature never changes the predicted label.")
    else:
        lines.append("None: temperature 1 (`vdcnn-res calibrate` fits one).")
    if any(w != 1.0 for w in weights):
        lines.append(f"Branch weights (cnn/n-grams): {'/'.join(f'{w:.2f}' for w in weights)}.")
    lines += [
        "",
        "## Intended use and limits",
        "",
        f"Sorts {unit} into the {len(labels)} labels above, and only those: anything else is still given one of them"
        + (" (or none, multi-label)" if multilabel else "") + ". "
        + (f"It knows only what {trained_on} shows; {unit} of another domain, language or style than that data "
           "will be classified less accurately than the evaluation above says. " if trained_on else "")
        + ("" if series else f"It reads at most {loaded.max_length} tokens of a text. ")
        + "Check it on your own labelled data before relying on it.",
        "",
    ]
    return "\n".join(lines)
