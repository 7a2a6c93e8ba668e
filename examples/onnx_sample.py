"""Sample names from a namegen ONNX model with onnxruntime and numpy only (no PyTorch, no namegen).

    python examples/onnx_sample.py model.onnx [-n 20] [--temperature 1.0] [--seed 0] [--max-len N]

model.onnx is what ``namegen.export.export_onnx`` writes: one GRU step (token int64 [B], h float32
[n_layer, B, hidden] -> logits, h_next), with the vocabulary and start token in its metadata.
Names are sampled as namegen samples them: never empty, padding never drawn, cut at --max-len
(default: the model's block_size).
"""

import argparse
import json
import re
from itertools import takewhile

import numpy as np
import onnxruntime as ort


def sample(session, n, temperature=1.0, max_len=None, rng=None):
    meta = session.get_modelmeta().custom_metadata_map  # every value is a string
    chars = json.loads(meta["vocab"])  # characters of ids 2, 3, ...
    pad, end, start = int(meta["pad_token"]), int(meta["end_token"]), int(meta["start_token"])
    max_len = max_len or int(meta["block_size"])
    rng = rng or np.random.default_rng()
    token = np.full(n, start, dtype=np.int64)
    h = np.zeros((int(meta["n_layer"]), n, int(meta["hidden"])), dtype=np.float32)
    ids = np.full((n, max_len), end, dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    for t in range(max_len):  # every name stops at max_len characters
        logits, h = session.run(["logits", "h_next"], {"token": token, "h": h})
        scores = logits.astype(np.float64) / temperature
        scores[:, pad] = -np.inf  # padding is never a character
        if t == 0:
            scores[:, end] = -np.inf  # no empty names
        p = np.exp(scores - scores.max(axis=1, keepdims=True))
        cdf = p.cumsum(axis=1)
        token = (cdf > rng.random((n, 1)) * cdf[:, -1:]).argmax(axis=1).astype(np.int64)  # one draw per row
        token[done] = end
        ids[:, t] = token
        done |= token == end
        if done.all():
            break
    names = ["".join(chars[i - 2] for i in takewhile(lambda i: i != end, row)) for row in ids]
    if meta.get("case") == "title":  # learned in lower case from a capitalised list: capitalise each part
        names = [re.sub(r"(^|[ -])(\w)", lambda m: m.group(1) + m.group(2).upper(), name) for name in names]
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the .onnx file namegen exported")
    parser.add_argument("-n", "--num", type=int, default=20, help="how many names (default 20)")
    parser.add_argument("--temperature", type=float, default=1.0, help="> 0; lower is more conservative")
    parser.add_argument("--seed", type=int, default=None, help="same seed, same names")
    parser.add_argument("--max-len", type=int, default=None, help="longest name (default: block_size)")
    parser.add_argument("--batch-size", type=int, default=1024, help="names stepped together")
    args = parser.parse_args()
    if args.num < 1 or not args.temperature > 0 or (args.max_len is not None and args.max_len < 1):
        parser.error("--num and --max-len must be positive, --temperature greater than 0")
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(args.seed)
    for start in range(0, args.num, args.batch_size):
        k = min(args.batch_size, args.num - start)
        print("\n".join(sample(session, k, args.temperature, args.max_len, rng)))


if __name__ == "__main__":
    main()
