"""Inference texts/s with and without BatchNorm folded into the convolutions (depth 9 and 29, one thread, best of 3).

Run from the repository root with ../shared/data beside it: .venv/bin/python benchmarks/probes/fold_batchnorm.py
A one-off probe behind docs/performance.md ("Tried afterwards"); not part of the harness.
"""

import copy, csv, time, torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from vdcnn_res import create_model
from vdcnn_res.model import BasicConvResBlock
from vdcnn_res.data.tokenizer import build_tokenizer
from vdcnn_res.data.batching import texts_to_batches
torch.set_num_threads(1)
def fold(model):
    m = copy.deepcopy(model).eval()
    for mod in m.modules():
        if isinstance(mod, BasicConvResBlock):
            for c, b in (("conv1", "bn1"), ("conv2", "bn2")):
                setattr(mod, c, fuse_conv_bn_eval(getattr(mod, c), getattr(mod, b))); setattr(mod, b, nn.Identity())
            if isinstance(mod.shortcut, nn.Sequential):  # a projection: 1x1 conv + BN
                mod.shortcut = nn.Sequential(fuse_conv_bn_eval(mod.shortcut[0], mod.shortcut[1]))
    return m
texts = [f"{t} {d}" for _, t, d in csv.reader(open("../shared/data/ag_news_7600/test.csv", newline=""))][:512]
tok = build_tokenizer("char")
batches = list(texts_to_batches(tok, texts, max_length=1024, batch_size=64))
for depth in (9, 29):
    model = create_model(f"vdcnn{depth}", num_classes=4).eval()
    for b in model.modules():
        if isinstance(b, nn.BatchNorm1d):
            b.running_mean.normal_(); b.running_var.uniform_(0.5, 2); b.weight.data.uniform_(0.5, 1.5); b.bias.data.normal_()
    folded = fold(model)
    with torch.inference_mode():
        x = batches[0]
        a = model(x["input_ids"], x["lengths"]); f = folded(x["input_ids"], x["lengths"])
        print("max diff fp32", (a - f).abs().max().item())
        res = {}
        for rep in range(3):
            for name, m in (("orig", model), ("fold", folded)):
                for bf in (False, True):
                    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf)
                    t = time.perf_counter()
                    with ctx:
                        for x in batches: m(x["input_ids"], x["lengths"])
                    res.setdefault((name, bf), []).append(time.perf_counter() - t)
        for k, v in res.items(): print(depth, k, round(len(texts) / min(v), 1), "texts/s")
