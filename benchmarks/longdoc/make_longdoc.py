"""Build long-document classification sets from ../shared/data (issue 20 reproduction).

Each document = a forum-style header (From/Subject/Organization/Lines with random names and
numbers, no class signal) + `--prefix` characters of class-neutral filler (generic forum
sentences from a fixed template list, sampled with a seeded RNG) + `--join` texts of ONE
class joined with spaces (+ a short signature). The first ~prefix characters therefore carry
no class signal; with max_length 512 the model sees only the head of the signal part.

Sources: dbpedia14_14k (14 classes) and/or ag_news_7600 (4 classes); `--source both` gives
18 classes (names prefixed db_/ag_). Splits follow the source files' own splits (texts are
only ever joined within a split). Deterministic for a given --seed. Writes
OUT/{train,valid,test}.tsv (header `text<TAB>label`, label = class name), OUT/stats.txt and
OUT/{split}_signal_start.txt (per row: the character where the class signal starts).

    python benchmarks/longdoc/make_longdoc.py /tmp/longdoc/p350j3 --prefix 350 --join 3
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

FIRST = ["john", "mary", "dave", "sue", "kim", "alex", "pat", "chris", "lee", "sam", "jo", "max", "eva", "tom", "ann"]
LAST = ["smith", "jones", "brown", "miller", "davis", "wilson", "moore", "taylor", "clark", "hall", "young", "king"]
HOSTS = ["cs.univ.edu", "mail.example.com", "netcom.com", "eng.corp.com", "news.isp.net", "lab.inst.org"]
ORGS = ["University Computing Services", "Example Corp.", "Netcom On-line Services", "Institute of Technology",
        "Engineering Department", "Public Access Network"]
SUBJ = ["Re: question", "Re: help needed", "Re: a quick question", "info wanted", "Re: see below",
        "Re: FAQ?", "Re: thoughts?", "looking for opinions", "Re: summary", "Re: follow-up"]
FILLER = [
    "In article <{n}@{host}> {user}@{host} writes:",
    "I have been reading this group for a while and finally decided to post.",
    "Thanks in advance for any help you can give me.",
    "Please reply by e-mail if you can, I will post a summary to the net.",
    "Sorry if this has been asked before, I could not find it in the FAQ.",
    "As I said in my previous post, I am not sure about this at all.",
    "Does anybody out there have any information on the following?",
    "This is a repost, the first one seems to have been lost somewhere.",
    "Any pointers would be greatly appreciated.",
    "I agree with most of what was said above, but let me add a few words.",
    "My own opinion only, not that of my employer.",
    "Well, I guess it depends on what you mean by that.",
    "I am cross-posting this because I think it is of general interest.",
    "Here is what I found out after some digging around.",
    "Let me know what you think, any comments are welcome.",
    "Followups redirected, please keep the discussion in one place.",
]


def read_source(name: str, split: str) -> list[tuple[str, str]]:
    """[(text, class_name)] of one split of a shared set."""
    folder = DATA / name
    classes = [c.strip() for c in open(folder / "classes.txt", encoding="utf-8") if c.strip()]
    rows = list(csv.reader(open(folder / f"{split}.csv", newline="", encoding="utf-8")))
    out = []
    for r in rows:
        if name == "ag_news_7600":
            label, text = classes[int(r[0]) - 1], f"{r[1]} {r[2]}"
            label = "ag_" + label
        else:
            label, text = classes[int(r[0])], r[1]
            label = "db_" + label
        out.append((" ".join(text.replace("\\", " ").split()), label))
    return out


def user(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)}.{rng.choice(LAST)}"


def boilerplate(rng: random.Random, n_chars: int) -> str:
    host = rng.choice(HOSTS)
    u = user(rng)
    head = (f"From: {u}@{host} ({u.replace('.', ' ').title()}) Subject: {rng.choice(SUBJ)} "
            f"Organization: {rng.choice(ORGS)} Lines: {rng.randint(10, 120)} ")
    parts = [head]
    while sum(map(len, parts)) < n_chars:
        s = rng.choice(FILLER).format(n=rng.randint(1000, 99999), host=rng.choice(HOSTS), user=user(rng))
        parts.append(("> " if rng.random() < 0.5 else "") + s + " ")
    return "".join(parts)


def build(rows: list[tuple[str, str]], n_per_class: int | None, args, rng: random.Random) -> list[tuple[str, str, int]]:
    """[(document, class name, character index where the class signal starts)]."""
    by_class: dict[str, list[str]] = {}
    for text, label in rows:
        by_class.setdefault(label, []).append(text)
    docs = []
    for label in sorted(by_class):
        texts = by_class[label][:]
        rng.shuffle(texts)
        n_docs = len(texts) // args.join if n_per_class is None else min(n_per_class, len(texts) // args.join)
        for i in range(n_docs):
            body = " ".join(texts[i * args.join:(i + 1) * args.join])
            n_pre = rng.randint(int(args.prefix * (1 - args.jitter)), int(args.prefix * (1 + args.jitter))) if args.prefix else 0
            pre = boilerplate(rng, n_pre) if args.prefix else ""
            sig = f" -- {user(rng)}@{rng.choice(HOSTS)}" if args.prefix else ""
            docs.append((pre + body + sig, label, len(pre)))
    rng.shuffle(docs)
    return docs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--source", choices=["dbpedia", "ag_news", "both"], default="both")
    p.add_argument("--prefix", type=int, default=350, help="mean characters of class-neutral boilerplate before the signal (0: none)")
    p.add_argument("--jitter", type=float, default=0.3, help="prefix length uniform in prefix*(1 +- jitter)")
    p.add_argument("--join", type=int, default=3, help="texts of the same class joined into one document")
    p.add_argument("--train-per-class", type=int, default=150)
    p.add_argument("--eval-per-class", type=int, default=30, help="valid and test documents per class")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    names = {"dbpedia": ["dbpedia14_14k"], "ag_news": ["ag_news_7600"], "both": ["dbpedia14_14k", "ag_news_7600"]}[args.source]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = []
    for split, n in (("train", args.train_per_class), ("valid", args.eval_per_class), ("test", args.eval_per_class)):
        rows = [r for name in names for r in read_source(name, split)]
        docs = build(rows, n, args, rng)
        with open(out / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
            w.writerow(["text", "label"])
            w.writerows(d[:2] for d in docs)
        # where each document's class signal starts (for the k-max probe), one per TSV row
        (out / f"{split}_signal_start.txt").write_text("".join(f"{d[2]}\n" for d in docs))
        lens = [len(t) for t, _, _ in docs]
        stats.append(f"{split}: {len(docs)} docs, {len({d[1] for d in docs})} classes, median {statistics.median(lens):.0f} chars, "
                     f">512: {100 * sum(l > 512 for l in lens) / len(lens):.0f}%")
    (out / "stats.txt").write_text("\n".join(stats) + "\n" + repr(vars(args)) + "\n")
    print("\n".join(stats))


if __name__ == "__main__":
    main()
