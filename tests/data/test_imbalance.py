"""Imbalanced classes: ``optim.class_weights`` (the loss) and ``loader.sampler=balanced`` (the
order an epoch draws), in both loaders, in a training run and across an exact resume."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import assert_same_weights, interrupt_and_resume
from torch import nn

from imgcls import api
from imgcls.config import (
    LoaderConfig,
    OptimConfig,
    build_config,
    from_saved,
    load_yaml,
    parse_override,
)
from imgcls.data.loaders import EpochLoader, TransformedDataset
from imgcls.data.memory import MemoryLoader
from imgcls.data.sampling import BalancedSampler, balanced_indices, class_counts, shard_order
from imgcls.data.sources import dataset_labels, from_dataset
from imgcls.engine import components
from imgcls.errors import ImgclsError
from imgcls.losses import create_loss, resolve_class_weights
from imgcls.models import create_model
from imgcls.runs.checkpoint import load_checkpoint

# 3 classes of 60, 12 and 3 images: 75 in all, 25 per class in a balanced epoch
LABELS = [0] * 60 + [1] * 12 + [2] * 3


def _counts(indices: torch.Tensor, labels: list[int] = LABELS) -> list[int]:
    return class_counts([labels[i] for i in indices.tolist()], 3)


# --------------------------------------------------------------------------- class weights


def test_auto_weights_are_inverse_frequency_with_mean_one_per_image():
    auto = OptimConfig(class_weights="auto")
    # N = 60, K = 3: w_c = 60 / (3 n_c)
    assert resolve_class_weights(auto, [30, 10, 20]) == pytest.approx([2 / 3, 2.0, 1.0])
    weights = resolve_class_weights(auto, [60, 12, 3])
    assert weights == pytest.approx([75 / 180, 75 / 36, 75 / 9])
    assert sum(n * w for n, w in zip([60, 12, 3], weights, strict=True)) / 75 == pytest.approx(1)
    # a class without training images is never a target: weight 0, the rest over K = 2
    assert resolve_class_weights(auto, [30, 0, 10]) == pytest.approx([40 / 60, 0.0, 2.0])
    assert resolve_class_weights(OptimConfig(), [30, 10]) is None


def test_list_weights_and_their_errors():
    cfg = build_config(overrides=dict([parse_override("optim.class_weights=[1, 2.5, 4]")]))
    assert cfg.optim.class_weights == [1.0, 2.5, 4.0]
    assert resolve_class_weights(cfg.optim, [5, 5, 5]) == [1.0, 2.5, 4.0]
    with pytest.raises(ImgclsError, match=r"optim.class_weights has 3 weights but the data has "
                                          r"2 classes"):
        resolve_class_weights(cfg.optim, [5, 5])
    for bad in ("often", [], [1.0, 0.0], [1.0, -2.0], [1.0, math.inf], [1.0, math.nan], 3):
        with pytest.raises(ImgclsError, match="optim.class_weights") as info:
            build_config(overrides={"optim.class_weights": bad})
        assert "\n" not in str(info.value)
    assert build_config(overrides={"optim.class_weights": "auto"}).optim.class_weights == "auto"


def test_sampler_key_is_validated():
    assert build_config().loader.sampler == "random"
    assert build_config(overrides={"loader.sampler": "balanced"}).loader.sampler == "balanced"
    with pytest.raises(ImgclsError, match="loader.sampler"):
        build_config(overrides={"loader.sampler": "stratified"})
    with pytest.raises(ImgclsError, match="loader.shuffle.*loader.sampler=balanced"):
        build_config(overrides={"loader.sampler": "balanced", "loader.shuffle": False})


def test_loss_uses_the_weights_and_keeps_label_smoothing():
    torch.manual_seed(0)
    logits, labels = torch.randn(16, 3), torch.randint(0, 3, (16,))
    weights = [0.5, 2.0, 4.0]
    cfg = OptimConfig(label_smoothing=0.1)
    reference = nn.CrossEntropyLoss(weight=torch.tensor(weights), label_smoothing=0.1)
    assert torch.allclose(create_loss(cfg, weights)(logits, labels), reference(logits, labels))
    # by hand, without smoothing: the weighted mean of the per-image losses
    per_image = nn.functional.cross_entropy(logits, labels, reduction="none")
    w = torch.tensor(weights)[labels]
    expected = (w * per_image).sum() / w.sum()
    assert torch.allclose(create_loss(OptimConfig(), weights)(logits, labels), expected)
    assert create_loss(cfg).weight is None


def test_train_state_weights_training_loss_only_and_says_so():
    cfg = build_config(overrides={"optim.class_weights": "auto", "model.name": "lenet",
                                  "train.amp": "off"})
    model = create_model(cfg.model, 3)
    lines: list[str] = []
    state = components.build_train_state(cfg, model, torch.device("cpu"), steps_per_epoch=2,
                                         class_counts=[30, 10, 20], say=lines.append)
    assert torch.allclose(state.loss_fn.weight, torch.tensor([2 / 3, 2.0, 1.0]))
    assert state.eval_loss_fn is not None and state.eval_loss_fn.weight is None
    assert len(lines) == 1 and "auto" in lines[0] and "0.6667 2 1" in lines[0]
    with pytest.raises(ImgclsError, match="optim.class_weights"):
        components.build_train_state(cfg, model, torch.device("cpu"), steps_per_epoch=2)
    plain = components.build_train_state(build_config(overrides={"model.name": "lenet"}), model,
                                         torch.device("cpu"), steps_per_epoch=2)
    assert plain.loss_fn.weight is None and plain.eval_loss_fn is None


def test_dataset_labels_reads_targets_samples_or_items():
    class Samples:
        samples = [("a.png", 1), ("b.png", 0)]

        def __len__(self) -> int:
            return 2

    assert dataset_labels(Samples()) == [1, 0]
    assert dataset_labels([(None, 2), (None, 0)]) == [2, 0]
    split = from_dataset([(None, y) for y in (0, 1, 1)], val=[(None, 0)])
    assert dataset_labels(split.train) == [0, 1, 1]


# --------------------------------------------------------------------------- balanced order


def test_balanced_epoch_has_equal_class_counts():
    for epoch in range(4):
        order = balanced_indices(LABELS, seed=0, epoch=epoch)
        assert len(order) == len(LABELS) and order.dtype == torch.int64
        assert _counts(order) == [25, 25, 25]
    # 76 images, 3 classes: 25 or 26 per class, the extra one going round the classes
    labels = LABELS + [0]
    extras = []
    for epoch in range(3):
        counts = class_counts([labels[i] for i in balanced_indices(labels, 0, epoch)], 3)
        assert sorted(counts) == [25, 25, 26]
        extras.append(counts.index(26))
    assert sorted(extras) == [0, 1, 2]


def test_balanced_order_is_a_pure_function_of_seed_and_epoch():
    a = balanced_indices(LABELS, seed=3, epoch=2)
    assert torch.equal(a, balanced_indices(torch.tensor(LABELS), seed=3, epoch=2))
    assert not torch.equal(a, balanced_indices(LABELS, seed=3, epoch=3))
    assert not torch.equal(a, balanced_indices(LABELS, seed=4, epoch=2))
    # the big class is subsampled differently each epoch
    big = [set(o.tolist()) & set(range(60)) for o in
           (balanced_indices(LABELS, 3, e) for e in range(2))]
    assert big[0] != big[1]


def test_big_classes_are_covered_and_small_ones_repeated_evenly():
    # class 0 (60 images, 25 draws an epoch) shows every image once in its first 50 draws and
    # none twice before all are shown: passes over a class run on from epoch to epoch
    seen: list[int] = []
    for epoch in range(3):
        seen += [i for i in balanced_indices(LABELS, 0, epoch).tolist() if i < 60]
    assert len(seen) == 75
    assert set(seen) == set(range(60))
    assert max(Counter(seen).values()) == 2
    # class 2 (3 images, 25 draws): 8 or 9 times each, never more unevenly
    small = Counter(i for i in balanced_indices(LABELS, 0, 0).tolist() if i >= 72)
    assert sorted(small.values()) == [8, 8, 9]


def test_sharding_gives_disjoint_equal_shares():
    order = balanced_indices(LABELS, 1, 0)  # 75 = 3 x 25
    shares = [shard_order(order, 3, rank) for rank in range(3)]
    assert [len(s) for s in shares] == [25, 25, 25]
    assert sorted(torch.cat(shares).tolist()) == sorted(order.tolist())
    # 75 on 2 ranks: padded to 38 each with a repeat from the start, as DistributedSampler
    two = [shard_order(order, 2, rank) for rank in range(2)]
    assert [len(s) for s in two] == [38, 38]
    assert two[1][-1] == order[0]
    assert [len(shard_order(order, 2, r, drop_last=True)) for r in range(2)] == [37, 37]
    samplers = [BalancedSampler(LABELS, seed=1, num_replicas=3, rank=r) for r in range(3)]
    assert [len(s) for s in samplers] == [25, 25, 25]
    assert [list(s) for s in samplers] == [s.tolist() for s in shares]


# --------------------------------------------------------------------------- both loaders


def _coded_images(n: int) -> torch.Tensor:
    """Image i is filled with the value i, so a batch tells which images it holds."""
    return torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()


def _memory_epoch(epoch: int, **kwargs) -> tuple[list[int], list[int]]:
    loader = MemoryLoader(_coded_images(75), torch.tensor(LABELS), batch_size=8, train=True,
                          seed=5, sampler="balanced", **kwargs)
    loader.set_epoch(epoch)
    xs, ys = zip(*loader, strict=True)
    values = torch.cat(xs)[:, 0, 0, 0] * 255  # the loader scales to [0, 1]
    return values.round().long().tolist(), torch.cat(ys).tolist()


def test_both_loaders_draw_the_same_balanced_epochs():
    dataset = [(image, y) for image, y in zip(_coded_images(75), LABELS, strict=True)]
    epoch_loader = EpochLoader(
        TransformedDataset(dataset, lambda x: x.float()), LoaderConfig(batch_size=8,
                                                                        sampler="balanced"),
        train=True, seed=5, labels=LABELS,
    )
    assert len(epoch_loader) == 10 and epoch_loader.num_samples == 75
    for epoch in range(2):
        epoch_loader.set_epoch(epoch)
        xs, ys = zip(*epoch_loader, strict=True)
        indices, labels = torch.cat(xs)[:, 0, 0, 0].long().tolist(), torch.cat(ys).tolist()
        assert class_counts(labels, 3) == [25, 25, 25]
        assert labels == [LABELS[i] for i in indices]
        assert indices == balanced_indices(LABELS, 5, epoch).tolist()
        assert _memory_epoch(epoch) == (indices, labels)
    with pytest.raises(ValueError, match="labels"):
        EpochLoader(dataset, LoaderConfig(sampler="balanced"), train=True)


def test_memory_loader_shards_a_balanced_epoch():
    shares = [_memory_epoch(1, num_replicas=3, rank=rank)[0] for rank in range(3)]
    assert [len(s) for s in shares] == [25, 25, 25]
    assert sorted(sum(shares, [])) == sorted(balanced_indices(LABELS, 5, 1).tolist())
    loader = MemoryLoader(_coded_images(75), torch.tensor(LABELS), batch_size=8, train=True,
                          sampler="balanced", num_replicas=2, rank=1)
    assert loader.num_samples == 38 and len(loader.indices()) == 38
    with pytest.raises(ValueError, match="sampler"):
        MemoryLoader(_coded_images(75), torch.tensor(LABELS), batch_size=8, train=True,
                     sampler="weighted")


# --------------------------------------------------------------------------- training runs


def _imbalanced_folder(make_image_folder, root: Path, keep: dict[str, int]) -> Path:
    """A flat class-folder set with ``keep[c]`` images of class ``c`` (the rest deleted)."""
    data = make_image_folder(root, classes=tuple(keep), per_class=max(keep.values()), size=32)
    for name, count in keep.items():
        for path in sorted((data / name).iterdir())[count:]:
            path.unlink()
    return data


FAST = {"model.name": "lenet", "loader.batch_size": 8, "optim.lr": 0.02,
        "sched.warmup_epochs": 0.0, "log.progress": "off", "log.tensorboard": False}


def _cfg(tmp_path: Path, data: Path, **overrides: object):
    values = {**FAST, "data.source": str(data), "log.output": str(tmp_path / "runs")}
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return build_config(overrides=values)


@pytest.mark.parametrize("loader", ["memory", "dataloader"])
def test_train_balanced_and_weighted(tmp_path, make_image_folder, capsys, loader):
    data = _imbalanced_folder(make_image_folder, tmp_path / "imgs", {"a": 30, "b": 10, "c": 5})
    result = api.train(_cfg(tmp_path, data, train__epochs=2, log__name="run",
                            loader__sampler="balanced", optim__class_weights="auto",
                            data__loader=loader))
    err = capsys.readouterr().err
    weight_lines = [line for line in err.splitlines()
                    if "class weights" in line and not line.startswith("train.monitor=")]
    assert len(weight_lines) == 1 and "auto" in weight_lines[0]
    # with either on and train.monitor left unset, best.pt is chosen by balanced accuracy
    monitor_lines = [line for line in err.splitlines() if line.startswith("train.monitor=")]
    assert monitor_lines == [
        "train.monitor=val_balanced_acc: class weights/balanced sampling are on, and accuracy "
        "would favour the majority class; set train.monitor to choose"]
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text()
            .splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in rows)
    saved = build_config(load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["config"])
    assert saved.loader.sampler == "balanced" and saved.optim.class_weights == "auto"
    assert saved.train.monitor == "val_balanced_acc"
    assert load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["monitor"] \
        == "val_balanced_acc"
    assert load_yaml(result.run_dir / "config.yaml")["train"]["monitor"] == "val_balanced_acc"


def test_monitor_default_follows_class_weights_and_balanced_sampling():
    assert build_config().train.monitor == "val_acc"
    for overrides in ({"optim.class_weights": "auto"}, {"optim.class_weights": [1, 3]},
                      {"loader.sampler": "balanced"}):
        assert build_config(overrides=overrides).train.monitor == "val_balanced_acc"
        # set by the user, to the old default or anything else, it is kept
        for monitor in ("val_acc", "val_loss"):
            kept = build_config(overrides={**overrides, "train.monitor": monitor})
            assert kept.train.monitor == monitor
    # layered on a config whose monitor was derived, it is derived again
    weighted = build_config(overrides={"optim.class_weights": "auto"})
    assert build_config(weighted, {"optim.class_weights": "none"}).train.monitor == "val_acc"
    # a resumed run keeps the monitor it saved, set or derived
    assert from_saved(weighted.to_saved()).train.monitor == "val_balanced_acc"
    kept = build_config(overrides={"optim.class_weights": "auto", "train.monitor": "val_acc"})
    assert from_saved(kept.to_saved()).train.monitor == "val_acc"
    # a run saved before the monitor was derived (no "explicit" list) keeps val_acc
    old = kept.to_dict()
    assert build_config(from_saved(old), {"train.epochs": 9}).train.monitor == "val_acc"


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["memory", "dataloader"])
def test_balanced_weighted_resume_is_exact(tmp_path, make_image_folder, loader):
    data = _imbalanced_folder(make_image_folder, tmp_path / "imgs", {"a": 24, "b": 8, "c": 4})
    common = dict(train__epochs=4, train__deterministic=True, loader__sampler="balanced",
                  optim__class_weights="auto", data__loader=loader)
    whole = api.train(_cfg(tmp_path, data, log__name="whole", **common))
    resumed = interrupt_and_resume(_cfg(tmp_path, data, log__name="split", **common), 2)
    assert_same_weights(whole.run_dir, resumed.run_dir)
