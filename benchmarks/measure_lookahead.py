"""Streaming lookahead vs offline scores: the cost of answering sooner, measured (not assumed).

    python benchmarks/measure_lookahead.py BUNDLE/model.onnx FEATURES [--split test]

For each lookahead, every test video's snippets (the extracted x_clip / x_patch) are streamed through the
bundle's head with `StreamingHead` and compared with the exact (offline) scores: max and mean absolute
score error, and the frame AUC of the streamed scores next to the offline AUC.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from stprompt.data.features import FeatureStore
from stprompt.metrics import frame_auc, snippet_to_frames
from stprompt.runtime.backends import open_backend
from stprompt.runtime.stream import StreamingHead


def stream_scores(backend, context: int, lookahead: int, x_clip: np.ndarray, x_patch: np.ndarray) -> np.ndarray:
    head = StreamingHead(backend.head, backend.dim, context, lookahead)
    out = []
    for t in range(len(x_clip)):
        out += head.push(x_clip[t], x_patch[t])
    out += head.flush()
    return np.array([r.score for r in out])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine")
    p.add_argument("features")
    p.add_argument("--split", default="test")
    p.add_argument("--lookaheads", default="0,1,2,4,8,16,24,32")
    args = p.parse_args()
    backend, manifest = open_backend(args.engine)
    context = manifest.head_settings.exact_lookahead
    store = FeatureStore.open(args.features)
    videos = store.videos(args.split)
    data = []
    for v in videos:
        a = store.load(v.id)
        t = len(a["frames"])
        data.append((v, a["x_clip"], a["x_patch"].reshape(t, 49, -1)))
    exact = [stream_scores(backend, context, context, xc, xp) for _, xc, xp in data]
    labels = np.concatenate([v.frame_labels(len(s) * store.stride) for (v, _, _), s in zip(data, exact, strict=True)])
    rows = []
    for la in [int(x) for x in args.lookaheads.split(",")] + [context]:
        scores = exact if la == context else [stream_scores(backend, context, la, xc, xp) for _, xc, xp in data]
        err = np.concatenate([np.abs(s - e) for s, e in zip(scores, exact, strict=True)])
        auc = frame_auc(labels, np.concatenate([snippet_to_frames(s, store.stride) for s in scores]))
        rows.append({"lookahead": la, "max_abs": float(err.max()), "mean_abs": float(err.mean()), "auc": auc})
    print(json.dumps({"context": context, "videos": len(videos), "stride": store.stride, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
