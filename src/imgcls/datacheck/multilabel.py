"""What only a multi-label CSV has to check: how many labels each image carries, the images
carrying none (an empty cell is allowed, but a whole batch of them is usually a broken export),
and which labels come together (pairs that nearly always co-occur are hard to tell apart)."""

from __future__ import annotations

from collections import Counter
from itertools import combinations
from typing import Any

from imgcls.datacheck.scan import Entry

TOP_PAIRS = 10  # label pairs listed, most frequent first
EXAMPLES = 10  # keys of images with no label listed


def label_stats(entries: list[Entry], label_counts: dict[str, int]) -> dict[str, Any]:
    """The ``multilabel`` section of check.json for the readable ``entries``; ``label_counts``
    are analyse's images per label (an image counts under each of its labels)."""
    per_image = Counter(len(e.label_set) for e in entries)
    most = max(per_image, default=0)
    pairs = Counter(pair for e in entries for pair in combinations(e.label_set, 2))
    top = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:TOP_PAIRS]
    none = [e.key for e in entries if not e.label_set]
    total = sum(per_image.values())
    return {
        "images": len(entries),
        "label_counts": dict(label_counts),
        "cardinality": {
            "mean": round(sum(k * n for k, n in per_image.items()) / total, 4) if total else 0.0,
            "max": most,
            "histogram": [{"labels": k, "images": per_image.get(k, 0)} for k in range(most + 1)],
        },
        "no_label": {"images": len(none), "examples": none[:EXAMPLES]},
        "top_pairs": [{"labels": list(pair), "images": n} for pair, n in top],
    }
