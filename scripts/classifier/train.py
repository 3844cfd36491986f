"""Trains, evaluates and exports the request classifier.

    python scripts/classifier/train.py --data ../shared/data/classifier \
        --embeddings crates/classifier/model --out crates/classifier/model [--loso]

Model: multinomial logistic regression (scikit-learn, lbfgs, L2) over the
features of features.py. Rows are weighted by the inverse size of their dataset
(the part of `source` before ':'), so no single dataset's style dominates.
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
DENSE_WEIGHT = 1.0
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
        den.append(F.dense(r["text"]) + F.keywords(toks))
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
    return w * len(rows) / w.sum()


def fit(X, y, w):
    m = LogisticRegression(C=C, max_iter=500, tol=1e-4)
    m.fit(X, y, sample_weight=w)
    return m


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
        "trained_on": {"rows": len(train), "C": C},
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
