"""Trains, evaluates and exports the request classifier.

    python scripts/classifier/train.py --data ../shared/data/classifier \
        --embeddings crates/classifier/model --out crates/classifier/model [--loso]

Model: multinomial logistic regression (scikit-learn, lbfgs, L2) over the
features of features.py, with an ordinal head (class Ordinal) that shares the
simple+medium+complex probability out by two cumulative binary models. Rows are
weighted by the inverse size of their dataset (the part of `source` before
':'), so no single dataset's style dominates, then so that each class carries
the same total weight.
Deterministic: no random draws anywhere (lbfgs from zeros).

Reports accuracy, macro-F1 and the confusion matrix on eval.jsonl, and with
--loso the leave-one-dataset-out figures (train on every other dataset of
train+eval, predict the held-out one; macro-F1 over the pooled predictions).
Writes classifier.json (weights, scaler, classes) and sample.jsonl (texts with
the probabilities this script computes, for the Rust reproduction test).

Retraining on your own prompts: give --data a directory with train.jsonl and
eval.jsonl of {"text", "label", "source"} rows (labels among the five classes),
e.g. exported from ClickHouse (docs/routing.md).
"""

import argparse
import base64
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

sys.path.insert(0, str(Path(__file__).parent))
import features as F  # noqa: E402

CLASSES = ["simple", "medium", "complex", "code", "image"]
EMB_WEIGHT = 2.0
DENSE_WEIGHT = 2.0
# Also equalise the classes' total weight (after the per-dataset weighting).
CLASS_BALANCE = True
# Split simple/medium/complex with two ordinal (cumulative) binary models; see Ordinal.
ORDINAL = True
# Inverse regularisation strength of the two ordinal cut models.
C_ORD = 4.0
C = 2.0


def load_table(d):
    raw = open(Path(d) / "embeddings.bin", "rb").read()
    assert raw[:8] == b"SYEMB001"
    n, dims = np.frombuffer(raw[8:16], dtype="<u4")
    scale = np.frombuffer(raw[16 : 16 + 4 * n], dtype="<f4")
    q = np.frombuffer(raw[16 + 4 * n : 16 + 4 * n + n * dims], dtype=np.int8).reshape(n, dims)
    table = q.astype(np.float32) * scale[:, None]
    vocab = {t: i for i, t in enumerate(open(Path(d) / "vocab.txt", encoding="utf-8").read().split("\n")[:n])}
    return table, vocab


def featurize(rows, table, vocab):
    data, ind, ptr = [], [], [0]
    emb, den = [], []
    for r in rows:
        toks = F.window(F.basic_tokens(r["text"]))
        h = F.hashed(toks)
        for b in sorted(h):
            ind.append(b)
            data.append(h[b])
        ptr.append(len(ind))
        emb.append(F.embedding(toks, vocab, table))
        den.append(F.dense(r["text"]) + F.keywords(toks) + F.extra(r["text"], toks))
    hs = sparse.csr_matrix((data, ind, ptr), shape=(len(rows), F.HASH_DIM))
    return hs, np.array(emb), np.array(den)


def assemble(hs, emb, den, mean, std):
    d = (den - mean) / std
    return sparse.hstack([hs, sparse.csr_matrix(emb * EMB_WEIGHT), sparse.csr_matrix(d * DENSE_WEIGHT)]).tocsr()


def dataset(src):
    return src.split(":")[0]


def weights(rows):
    n = Counter(dataset(r["source"]) for r in rows)
    w = np.array([1.0 / n[dataset(r["source"])] for r in rows])
    if CLASS_BALANCE:
        labels = [r["label"] for r in rows]
        total = Counter()
        for l, x in zip(labels, w):
            total[l] += x
        w = w * np.array([sum(total.values()) / (len(total) * total[l]) for l in labels])
    return w * len(rows) / w.sum()


class Ordinal:
    """The 5-way model gives P(code), P(image) and the text mass P(simple)+P(medium)+P(complex);
    two binary models on the text rows (Frank & Hall), P(y > simple) and P(y > medium), share that
    mass out: simple = text (1 - g0), medium = text (g0 - g1), complex = text g1, g1 = min(g1, g0).
    Each binary model's rows are reweighted so its two sides carry equal weight."""

    def __init__(self, five, cuts):
        self.five, self.cuts = five, cuts
        self.coef_, self.intercept_ = five.coef_, five.intercept_

    def predict_proba(self, X):
        p = self.five.predict_proba(X)
        text = p[:, :3].sum(1)
        g0 = self.cuts[0].predict_proba(X)[:, 1]
        g1 = np.minimum(self.cuts[1].predict_proba(X)[:, 1], g0)
        p[:, 0], p[:, 1], p[:, 2] = text * (1 - g0), text * (g0 - g1), text * g1
        return p

    def predict(self, X):
        return self.predict_proba(X).argmax(1)


def fit(X, y, w):
    m = LogisticRegression(C=C, max_iter=3000, tol=1e-4)
    m.fit(X, y, sample_weight=w)
    if not ORDINAL:
        return m
    t = y <= 2
    cuts = []
    for k in (0, 1):
        yy = (y[t] > k).astype(int)
        ww = w[t].copy()
        side = np.array([ww[yy == 0].sum(), ww[yy == 1].sum()])
        ww = ww * (side.sum() / (2 * side))[yy]
        b = LogisticRegression(C=C_ORD, max_iter=3000, tol=1e-4)
        b.fit(X[t], yy, sample_weight=ww)
        cuts.append(b)
    return Ordinal(m, cuts)


def report(name, y, p):
    acc = accuracy_score(y, p)
    f1 = f1_score(y, p, average="macro")
    per = f1_score(y, p, average=None, labels=list(range(5)))
    cm = confusion_matrix(y, p, labels=list(range(5)))
    print(f"\n## {name}: accuracy {acc:.3f}, macro-F1 {f1:.3f}")
    print("per-class F1: " + ", ".join(f"{c} {v:.3f}" for c, v in zip(CLASSES, per)))
    print("| true \\ predicted | " + " | ".join(CLASSES) + " |")
    print("|---|" + "---|" * 5)
    for c, row in zip(CLASSES, cm):
        print(f"| {c} | " + " | ".join(str(x) for x in row) + " |")
    return {"accuracy": round(acc, 4), "macro_f1": round(f1, 4), "per_class_f1": dict(zip(CLASSES, [round(x, 4) for x in per])), "confusion": cm.tolist()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--embeddings", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--loso", action="store_true")
    args = ap.parse_args()
    table, vocab = load_table(args.embeddings)
    read = lambda f: [json.loads(l) for l in open(Path(args.data) / f, encoding="utf-8")]
    train, evals = read("train.jsonl"), read("eval.jsonl")
    y_tr = np.array([CLASSES.index(r["label"]) for r in train])
    y_ev = np.array([CLASSES.index(r["label"]) for r in evals])
    hs_tr, emb_tr, den_tr = featurize(train, table, vocab)
    hs_ev, emb_ev, den_ev = featurize(evals, table, vocab)
    mean, std = den_tr.mean(0), den_tr.std(0)
    std[std == 0] = 1.0
    X_tr = assemble(hs_tr, emb_tr, den_tr, mean, std)
    X_ev = assemble(hs_ev, emb_ev, den_ev, mean, std)
    model = fit(X_tr, y_tr, weights(train))
    results = {"eval": report("eval.jsonl", y_ev, model.predict(X_ev))}

    if args.loso:
        rows = train + evals
        y = np.concatenate([y_tr, y_ev])
        X = sparse.vstack([X_tr, X_ev]).tocsr()
        groups = np.array([dataset(r["source"]) for r in rows])
        pred = np.zeros(len(rows), dtype=int)
        per_ds = {}
        for g in sorted(set(groups)):
            test = groups == g
            m = fit(X[~test], y[~test], weights([r for r, t in zip(rows, test) if not t]))
            pred[test] = m.predict(X[test])
            per_ds[g] = round(float((pred[test] == y[test]).mean()), 3)
            print(f"  held out {g}: accuracy {per_ds[g]}", flush=True)
        results["loso"] = report("leave-one-dataset-out (pooled)", y, pred)
        results["loso"]["per_dataset_accuracy"] = per_ds

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    coef = model.coef_.astype("<f4")
    json.dump({
        "format": 1,
        "classes": CLASSES,
        "hash_dim": F.HASH_DIM,
        "window": F.WINDOW,
        "bigrams": F.BIGRAMS,
        "emb_dims": int(table.shape[1]),
        "emb_weight": EMB_WEIGHT,
        "dense_weight": DENSE_WEIGHT,
        "dense_names": F.DENSE_NAMES,
        "dense_mean": mean.tolist(),
        "dense_std": std.tolist(),
        "bias": model.intercept_.tolist(),
        "weights_f32_le_base64": base64.b64encode(coef.tobytes()).decode(),
        "ordinal": None if not ORDINAL else {
            "bias": [float(b.intercept_[0]) for b in model.cuts],
            "weights_f32_le_base64": [base64.b64encode(b.coef_[0].astype("<f4").tobytes()).decode() for b in model.cuts],
        },
        "trained_on": {"rows": len(train), "C": C, "class_balance": CLASS_BALANCE, "ordinal": ORDINAL, "C_ord": C_ORD},
        "results": results,
    }, open(out / "classifier.json", "w"), indent=1)
    # A fixed sample for the Rust reproduction test: every 20th eval row of a
    # permissively licensed source.
    ok = {"MIT", "Apache-2.0", "CC0-1.0", "CC-BY-4.0"}
    sample = [r for r in evals if r.get("license") in ok][::20]
    # And long prompts (past the token window and the structural-feature regions),
    # with non-ASCII text, so the bounded paths are checked too.
    long_rows = [r["text"] for r in evals if r.get("license") in ok]
    for k in range(3):
        text = "\n\n".join(long_rows[k * 40 : k * 40 + 40]) + " Überprüfe das, 東京 ✓"
        sample.append({"text": text})
    probs = model.predict_proba(assemble(*featurize(sample, table, vocab), mean, std))
    with open(out / "sample.jsonl", "w", encoding="utf-8") as f:
        for r, p in zip(sample, probs):
            f.write(json.dumps({"text": r["text"], "probs": [round(float(x), 6) for x in p]}, ensure_ascii=False) + "\n")
    print(f"\nwrote {out / 'classifier.json'} and {len(sample)} sample rows")


if __name__ == "__main__":
    main()
