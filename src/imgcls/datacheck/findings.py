"""Turn the decoded images into the check's numbers: counts, imbalance, sizes, modes,
unreadable files, duplicates within the parts and leaks between them (and, for a label CSV, the
label statistics of :mod:`.multilabel`). One JSON-ready dict."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from imgcls.datacheck.hashing import hamming, near_pairs, phashes
from imgcls.datacheck.multilabel import label_stats
from imgcls.datacheck.scan import PARTS, WHOLE, Decoded, Entry, Source, thumbs_of

IMBALANCE_WARN = 3.0  # a part whose largest class has 3x the images of its smallest is flagged


def _file(entry: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"part": entry.part, "class": entry.label, "file": entry.key}
    if entry.labels is not None:
        out["labels"] = list(entry.labels)
    return out


def _stats(values: list[int]) -> dict[str, float]:
    return {"min": int(min(values)), "median": float(np.median(values)), "max": int(max(values))}


def _counts(source: Source, ok: list[int]) -> dict[str, dict[str, int]]:
    """Images per class and part; an image with several labels counts in each of them."""
    counts = {p: dict.fromkeys(source.classes, 0) for p in source.parts}
    for i in ok:
        entry = source.entries[i]
        for label in entry.label_set:
            counts[entry.part][label] = counts[entry.part].get(label, 0) + 1
    return counts


def _imbalance(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    out = {}
    for part, per_class in counts.items():
        if not per_class:
            continue
        most = max(per_class, key=lambda c: per_class[c])
        least = min(per_class, key=lambda c: per_class[c])
        low = per_class[least]
        out[part] = {"largest_class": most, "largest": per_class[most], "smallest_class": least,
                     "smallest": low, "ratio": per_class[most] / low if low else None}
    return out


def _groups_by_part(groups: list[list[int]], entries: list[Entry]) -> dict[str, Any]:
    """How many groups (and their images) sit within each part, and how many span parts."""
    within: dict[str, dict[str, int]] = defaultdict(lambda: {"groups": 0, "images": 0})
    across = 0
    for members in groups:
        per_part = Counter(entries[i].part for i in members)
        across += len(per_part) > 1
        for part, n in per_part.items():
            if n > 1:
                within[part]["groups"] += 1
                within[part]["images"] += n
    return {"within_part": dict(within), "across_parts": across}


def analyse(source: Source, decoded: list[Decoded], threshold: int) -> dict[str, Any]:
    """Every number of the check as a JSON-ready dict (see docs/own-data.md, "Check your data")."""
    entries = source.entries
    ok = [i for i, d in enumerate(decoded) if d.error is None]
    counts = _counts(source, ok)
    sizes = Counter(f"{decoded[i].width}x{decoded[i].height}" for i in ok)
    report: dict[str, Any] = {
        "source": str(source.path), "kind": source.kind, "parts": source.parts,
        "classes": source.classes,
        "images": {"files": len(entries), "readable": len(ok),
                   "unreadable": len(entries) - len(ok)},
        "counts": counts,
        "imbalance": _imbalance(counts),
        "sizes": {
            "histogram": [{"size": s, "count": n} for s, n in sorted(
                sizes.items(), key=lambda item: (-item[1], item[0]))],
            "width": _stats([decoded[i].width for i in ok]) if ok else None,
            "height": _stats([decoded[i].height for i in ok]) if ok else None,
        },
        "modes": dict(Counter(decoded[i].mode for i in ok).most_common()),
        "formats": dict(Counter(decoded[i].format for i in ok).most_common()),
        "unreadable": [{**_file(entries[i]), "reason": d.error}
                       for i, d in enumerate(decoded) if d.error is not None],
        "blank": [_file(entries[i]) for i in ok if decoded[i].flat],
        "settings": {"near_threshold": threshold, "imbalance_warn": IMBALANCE_WARN},
    }
    if source.kind == "csv":
        report["multilabel"] = label_stats([entries[i] for i in ok], counts[WHOLE])
    report.update(_duplicates(source, decoded, ok, threshold))
    return report


def _duplicates(source: Source, decoded: list[Decoded], ok: list[int],
                threshold: int) -> dict[str, Any]:
    entries = source.entries
    by_pixels: dict[str, list[int]] = defaultdict(list)
    for i in ok:
        by_pixels[decoded[i].pixels].append(i)
    exact = [m for m in by_pixels.values() if len(m) > 1]

    # Near duplicates: one representative per distinct image; flat ones carry no pHash signal.
    reps = [m[0] for m in by_pixels.values() if not decoded[m[0]].flat]
    hashes = phashes(thumbs_of([decoded[i] for i in reps])) if reps else np.zeros(0, np.uint64)
    hash_of = {decoded[i].pixels: h for i, h in zip(reps, hashes.tolist(), strict=True)}
    components: dict[int, list[int]] = defaultdict(list)
    for rep, label in zip(reps, near_pairs(hashes, threshold).labels(), strict=True):
        components[label].append(rep)
    near = [[i for r in rs for i in by_pixels[decoded[r].pixels]]
            for rs in components.values() if len(rs) > 1]
    exact_of = {i: n for n, m in enumerate(exact) for i in m}
    near_of = {i: n for n, m in enumerate(near) for i in m}

    def distance(i: int, j: int) -> int:
        return int(hamming(hash_of[decoded[i].pixels], hash_of[decoded[j].pixels]))

    def describe(members: list[int], with_distance: bool) -> dict[str, Any]:
        files = [_file(entries[i]) for i in members]
        if with_distance:
            for f, i in zip(files, members, strict=True):
                f["distance"] = distance(members[0], i)
        group: dict[str, Any] = {"files": files,
                                 "classes": sorted({entries[i].label for i in members})}
        if source.kind == "csv":
            group["label_sets"] = sorted(map(list, {entries[i].label_set for i in members}))
        return group

    leaks = _leaks(source, decoded, exact, near, exact_of, near_of, distance)
    # Different classes, or for a label CSV different label sets, within one group.
    conflicts = sum(len({entries[i].label_set for i in m}) > 1 for m in exact + near)
    return {
        "exact_duplicates": {"groups": len(exact), "images": sum(map(len, exact)),
                             "extra_copies": sum(len(m) - 1 for m in exact),
                             **_groups_by_part(exact, entries),
                             "list": [describe(m, False) for m in exact]},
        "near_duplicates": {"groups": len(near), "images": sum(map(len, near)),
                            **_groups_by_part(near, entries),
                            "list": [describe(m, True) for m in near]},
        "label_conflicts": conflicts,
        "leaks": leaks,
    }


def _leaks(source: Source, decoded: list[Decoded], exact: list[list[int]],
           near: list[list[int]], exact_of: dict[int, int], near_of: dict[int, int],
           distance: Any) -> dict[str, Any]:
    """Each image of a later part (val, test) with a copy in an earlier one (train, val): one
    pair per leaked image, its exact copy when there is one, else its closest near copy."""
    entries = source.entries
    parts = [p for p in PARTS if p in source.parts]
    counts = {f"{a}-{b}": {"exact": 0, "near": 0}
              for n, a in enumerate(parts) for b in parts[n + 1 :]}
    pairs = []
    for i in sorted(set(exact_of) | set(near_of)):
        later = entries[i].part
        for earlier in parts[: parts.index(later)] if later in parts else []:
            kind, match = "exact", None
            if i in exact_of:
                match = next((j for j in exact[exact_of[i]] if entries[j].part == earlier), None)
            if match is None and i in near_of:
                kind = "near"
                found = [j for j in near[near_of[i]] if entries[j].part == earlier]
                match = min(found, key=lambda j: distance(i, j)) if found else None
            if match is None:
                continue
            counts[f"{earlier}-{later}"][kind] += 1
            pairs.append({"parts": f"{earlier}-{later}", "kind": kind,
                          "distance": 0 if kind == "exact" else distance(i, match),
                          "file": entries[i].key, "class": entries[i].label,
                          "copy_of": entries[match].key, "copy_class": entries[match].label})
    return {"counts": counts, "total": len(pairs), "pairs": pairs}
