"""Print the probe logs of benchmarks/longdoc/probes.py compactly.

    python benchmarks/longdoc/summarize.py RUN.jsonl [RUN2.jsonl ...]      # per-step probes + epochs
    python benchmarks/longdoc/summarize.py --epochs RUN*.jsonl             # epoch table only
    python benchmarks/longdoc/summarize.py --agg NAME_s*.jsonl             # mean +- sd per epoch over seeds
    python benchmarks/longdoc/summarize.py --dead RUN*.jsonl               # fc1/fc2 dead share + stem grad at a few steps
"""
import json, sys, statistics as st

args = sys.argv[1:]
mode = "steps"
if args and args[0] in ("--epochs", "--agg", "--dead"):
    mode, args = args[0][2:], args[1:]
runs = {p: [json.loads(l) for l in open(p) if l.strip()] for p in args}
if mode == "dead":
    for p, rs in runs.items():
        st_ = {r["step"]: r for r in rs if r["kind"] == "step" and "fc1_dead" in r}
        print(p.rsplit("/", 1)[-1], " ".join(f"s{s}: fc1 {100 * st_[s]['fc1_dead']:.0f}% fc2 {100 * st_[s]['fc2_dead']:.0f}% gstem {st_[s]['grad']['stem']:.2f}"
                                             for s in (0, 10, 20, 40, 80, 160, 240) if s in st_))
    sys.exit()
if mode == "agg":
    eps = [[r for r in rs if r["kind"] == "epoch"] for rs in runs.values()]
    n = min(len(e) for e in eps)
    print(f"{len(eps)} runs: " + " ".join(p.rsplit('/', 1)[-1] for p in runs))
    print("epoch | train loss (1st half of ep.) | train loss | train acc | val acc")
    for i in range(n):
        def ms(k, scale=1):
            v = [e[i][k] * scale for e in eps]
            return f"{st.mean(v):.3f} +- {st.stdev(v) if len(v) > 1 else 0:.3f}" if scale == 1 else f"{st.mean(v):.1f} +- {st.stdev(v) if len(v) > 1 else 0:.1f}"
        print(f"{i + 1} | {ms('train_loss_1st_half')} | {ms('train_loss')} | {ms('train_acc', 100)} | {ms('val_acc', 100)}")
    sys.exit()
for p, rs in runs.items():
    print("==", p)
    for r in rs:
        if r["kind"] == "epoch":
            print(f"  EPOCH {r['epoch'] + 1}: train loss {r['train_loss']:.3f} (halves {r.get('train_loss_1st_half', 0):.3f}/{r.get('train_loss_2nd_half', 0):.3f}) "
                  f"train acc {100 * r['train_acc']:.1f} val loss {r['val_loss']:.3f} val acc {100 * r['val_acc']:.1f}")
        elif mode == "steps":
            g = r["grad"]
            print(f"  step {r['step']:4d} lr {r['lr']:.2e} | grad emb {g['embedding']:.3f} stem {g['stem']:.2f} s0 {g['stage0']:.2f} s3 {g['stage3']:.2f} "
                  f"fc1 {g.get('fc1', float('nan')):.2f} fc2 {g.get('fc2', float('nan')):.2f} fc {g['fc']:.2f} | kmax {r.get('kmax_mean', 0):.2f}/{r.get('kmax_std', 0):.2f} z{r.get('kmax_zero_frac', 0):.2f} "
                  f"| fc1 {r.get('fc1_mean', 0):.2f}/{r.get('fc1_std', 0):.2f} dead {r.get('fc1_dead', 0):.2f} zero {r.get('fc1_zero_frac', 0):.2f} "
                  f"| fc2 {r.get('fc2_mean', 0):.2f}/{r.get('fc2_std', 0):.2f} dead {r.get('fc2_dead', 0):.2f} zero {r.get('fc2_zero_frac', 0):.2f} "
                  f"| logit std {r.get('logit_std', 0):.3f} btw {r.get('logit_between_std', 0):.3f} pmax {r.get('pmax', 0):.3f}")
