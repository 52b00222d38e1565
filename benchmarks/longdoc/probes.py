"""Probe callback for the long-document plateau (issue 20). Add it to any `vdcnn-res fit`:

    --trainer.callbacks+=benchmarks.longdoc.probes.PlateauProbe \
    --trainer.callbacks.out=/tmp/longdoc/runs/NAME.jsonl --trainer.callbacks.every=10

(PYTHONPATH must hold the repository root.) Writes JSON lines:
- {"kind": "step", ...} every `every` optimizer steps: lr, loss, per-part gradient norms
  (embedding, stem, stage0..3, fc1, fc2, fc), head statistics of the batch (k-max features
  mean/std, fc1/fc2 pre-activation mean/std, fraction of dead hidden units = units <= 0 for
  every text of the batch, fraction of zero activations), logits std, batch accuracy,
  share of the k-max features that are exactly 0, the softmax's max probability;
- {"kind": "epoch", ...} at each validation end: mean train loss and train acc of the epoch,
  val loss / acc.
Also sets torch.set_num_threads(1) (the one-thread rule of this machine).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pytorch_lightning import Callback


class PlateauProbe(Callback):
    def __init__(self, out: str, every: int = 10) -> None:
        super().__init__()
        torch.set_num_threads(1)
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text("")
        self.every = every
        self.acts: dict[str, torch.Tensor] = {}
        self.losses: list[float] = []
        self.cnn_losses: list[float] = []  # the CNN branch's own loss, where it has one (model.branch_loss)
        self.correct = self.seen = 0

    def _w(self, rec: dict) -> None:
        with open(self.out, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def on_fit_start(self, trainer, pl_module) -> None:
        head = pl_module.model.head
        for name in ("fc1", "fc2", "fc"):
            if hasattr(head, name):  # hidden_size 0: a linear head, fc only
                getattr(head, name).register_forward_hook(self._hook(name))
        pl_module.model.pool.register_forward_hook(self._hook("kmax"))

    def _hook(self, name):
        def fn(mod, inp, out):
            if mod.training:
                self.acts[name] = out.detach().float()
        return fn

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        if step % self.every:
            return
        m = pl_module.model
        parts = {"embedding": m.embedding, "stem": m.stem, **{f"stage{i}": s for i, s in enumerate(m.stages)},
                 **{k: getattr(m.head, k) for k in ("fc1", "fc2", "fc") if hasattr(m.head, k)}}
        g = {}
        for k, mod in parts.items():
            sq = [p.grad.float().pow(2).sum() for p in mod.parameters() if p.grad is not None]
            g[k] = float(torch.stack(sq).sum().sqrt()) if sq else 0.0
        rec = {"kind": "step", "step": step, "epoch": trainer.current_epoch,
               "lr": optimizer.param_groups[0]["lr"], "grad": g}
        a = self.acts
        if "fc" in a:
            feats = a["kmax"].flatten(1)
            rec["kmax_mean"], rec["kmax_std"] = float(feats.mean()), float(feats.std())
            rec["kmax_zero_frac"] = float((feats == 0).float().mean())
            for k in ("fc1", "fc2") if "fc1" in a else ():
                pre = a[k]
                rec[f"{k}_mean"], rec[f"{k}_std"] = float(pre.mean()), float(pre.std())
                rec[f"{k}_dead"] = float((pre <= 0).all(0).float().mean())
                rec[f"{k}_zero_frac"] = float((pre <= 0).float().mean())
            lg = a["fc"]
            rec["logit_std"] = float(lg.std(1).mean())
            rec["logit_between_std"] = float(lg.std(0).mean())  # do texts get different logits?
            rec["pmax"] = float(lg.softmax(-1).max(-1).values.mean())
        self._w(rec)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # the model's own loss (of the summed logits), not the objective with branch losses
        loss = outputs.get("model_loss", outputs["loss"]) if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))
        if isinstance(outputs, dict) and "cnn" in outputs.get("branch_losses", {}):
            self.cnn_losses.append(float(outputs["branch_losses"]["cnn"]))
        if "fc" in self.acts:
            self.correct += int((self.acts["fc"].argmax(-1) == batch["labels"]).sum())
            self.seen += len(batch["labels"])

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        cm = trainer.callback_metrics
        rec = {"kind": "epoch", "epoch": trainer.current_epoch, "step": trainer.global_step,
               "train_loss": sum(self.losses) / max(1, len(self.losses)),
               "train_acc": self.correct / max(1, self.seen),
               "val_loss": float(cm.get("val/loss", float("nan"))), "val_acc": float(cm.get("val/acc", float("nan")))}
        # loss over the first / second half of the epoch: when does it leave ln(C)?
        h = len(self.losses) // 2
        if h:
            rec["train_loss_1st_half"] = sum(self.losses[:h]) / h
            rec["train_loss_2nd_half"] = sum(self.losses[h:]) / (len(self.losses) - h)
        # the CNN's own loss by quarter of the epoch: flattened out at chance (dead) or still falling?
        q = len(self.cnn_losses) // 4
        if q:
            rec["cnn_loss_quarters"] = [sum(self.cnn_losses[i * q:(i + 1) * q]) / q for i in range(4)]
        self.losses = []
        self.cnn_losses = []
        self.correct = self.seen = 0
        self._w(rec)
