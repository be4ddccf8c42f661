"""The model card's text from :func:`imgcls.report.card.card_facts`: Hugging Face's YAML front
matter (``model-index`` with the validation and test metrics), then the sections a reader
needs: intended use, classes, data, results with intervals, weak spots, calibration, and how
the model was made (the exact command, the config, the library versions)."""

from __future__ import annotations

from typing import Any

import yaml

from imgcls.report.card import WEAK

SPLIT_NAMES = {"val": "validation", "test": "test"}


def _front_matter(facts: dict[str, Any]) -> str:
    source = str(facts["config"]["data"]["source"])
    results = []
    for split, s in facts["scored"].items():
        results.append({
            "task": {"type": "image-classification", "name": "Image classification"},
            "dataset": {"name": source, "type": "imagefolder", "split": SPLIT_NAMES[split]},
            "metrics": [
                {"type": "accuracy", "value": s["accuracy"], "name": f"{split} accuracy"},
                {"type": "f1", "value": s["macro_f1"], "name": f"{split} macro-F1",
                 "args": {"average": "macro"}},
            ],
        })
    meta = {
        "library_name": "imgcls", "license": "other", "pipeline_tag": "image-classification",
        "tags": ["image-classification", "imgcls", str(facts["config"]["model"]["name"])],
        "datasets": [source], "metrics": ["accuracy", "f1"],
        "model-index": [{"name": facts["run"].name, "results": results}],
    }
    return ("---\n# license: a placeholder; set the one you release the model under\n"
            + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n")


def _table(rows: list[list[Any]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _results(facts: dict[str, Any]) -> str:
    rows = []
    for split, s in facts["scored"].items():
        low, high = s["accuracy_ci"]
        rows.append([SPLIT_NAMES[split], s["images"], f"{s['accuracy']:.4f}",
                     f"[{low:.4f}, {high:.4f}]", f"{s['balanced_acc']:.4f}",
                     f"{s['macro_f1']:.4f}", f"{s['ece']:.4f}"])
    text = _table(rows, ["split", "images", "accuracy", "95% interval (Wilson)",
                         "balanced accuracy", "macro-F1", "ECE"])
    text += ("\nScored on best.pt (else last.pt) with the run's evaluation preprocessing and "
             "test-time augmentation, as `imgcls evaluate` scores it.\n")
    exp = facts["experiment"]
    if exp:
        stat = exp["stats"][f"best_{exp['monitor']}"]
        spread = (f"{stat['mean']:.4f} ± {stat['std']:.4f} (std), 95% CI "
                  f"[{stat['ci_low']:.4f}, {stat['ci_high']:.4f}]" if stat["std"] is not None
                  else f"{stat['mean']:.4f} (one run)")
        text += (f"\nThis run is one of {exp['finished']} finished runs of an `imgcls "
                 f"{exp['kind']}` experiment ({exp['experiment']}): best {exp['monitor']} over "
                 f"them {spread}.\n")
    return text


def _weak_spots(facts: dict[str, Any]) -> str:
    s = facts["scored"]["val"]
    classes = [r for r in s["per_class"] if r["class"] not in ("macro avg", "weighted avg")]
    lowest = sorted(classes, key=lambda r: float(r["recall"]))[:WEAK]
    text = "Lowest recall on the validation split:\n\n" + _table(
        [[r["class"], f"{float(r['recall']):.4f}", f"{float(r['precision']):.4f}",
          r["support"]] for r in lowest], ["class", "recall", "precision", "images"])
    pairs = s["pairs"][:WEAK]
    if pairs:
        text += "\nMost-confused pairs:\n\n" + _table(
            [[p["true"], p["predicted"], p["count"], f"{float(p['fraction_of_true']):.4f}"]
             for p in pairs], ["true", "predicted as", "images", "fraction of true class"])
    return text


def _calibration(facts: dict[str, Any]) -> str:
    s = facts["scored"]["val"]
    text = (f"Expected calibration error on the validation split: {s['ece']:.4f} "
            f"({s['ece_bins']} bins of the top-1 confidence). To answer only when sure, "
            "`imgcls predict --min-confidence P` says `unknown` below P; on the validation "
            "split:\n\n")
    rows = [[f"{r['target_accuracy']:.0%}",
             "not reached" if r["min_confidence"] is None else f"{r['min_confidence']:.4f}",
             f"{r['coverage']:.4f}"] for r in s.get("min_confidence_for", [])]
    return text + _table(rows, ["accuracy kept", "P", "share of images answered"])


def card_markdown(facts: dict[str, Any]) -> str:
    record, config, run = facts["record"], facts["config"], facts["run"]
    prov = record.provenance or {}
    sizes = facts["split_sizes"]
    classes = record.classes
    versions = ", ".join(f"{k} {prov[k]}" for k in ("imgcls", "torch", "python") if k in prov)
    sections = [
        _front_matter(facts),
        f"# Model card: {run.name}\n",
        f"A {config['model']['name']} image classifier for {len(classes)} classes, trained "
        f"with imgcls for {record.epoch} epochs; input {record.input_size} px "
        f"({config['transforms']['normalize']} normalisation).\n",
        "## Intended use\n\nClassifying images like those of the training data below into "
        "its classes. It was evaluated on that data only: check it on your own images before "
        "relying on it. (State here who should use it, for what, and what not.)\n",
        "## Classes\n\n" + ", ".join(f"`{c}`" for c in classes) + "\n",
        f"## Data\n\nSource: `{config['data']['source']}`. Images per split: "
        + ", ".join(f"{k} {v}" for k, v in sizes.items()) + " (`split.json`).\n",
        "## Results\n\n" + _results(facts),
        "## Weak spots\n\n" + _weak_spots(facts),
        "## Calibration\n\n" + _calibration(facts),
        "## How it was made\n\n"
        f"Command: `{prov.get('command', 'not recorded')}`\n\n"
        f"Software: {versions or 'not recorded'}; device {prov.get('device', '?')}, "
        f"{prov.get('world_size', 1)} process(es).\n\nConfig (`config.yaml`):\n\n```yaml\n"
        + yaml.safe_dump(config, sort_keys=False) + "```\n",
        "## Limitations\n\nThe figures above hold for images drawn like the validation "
        "split; other cameras, lighting or classes outside the list will do worse, and the "
        "model always answers with one of its classes unless `--min-confidence` is used.\n",
    ]
    return "\n".join(sections)
