"""The modern augmentations: an augmentation policy and random erasing per image (the
DataLoader), MixUp and CutMix per batch (both loaders), with the loss on mixed labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_same_weights, interrupt_and_resume
from torchvision.transforms import v2

from imgcls import api
from imgcls.config import TransformConfig, build_config
from imgcls.data.label_mixing import label_mixing
from imgcls.data.transforms import build_transform
from imgcls.engine.loop import TrainState, train_one_epoch
from imgcls.losses import create_loss


@pytest.mark.parametrize(("name", "kind", "size"), [
    ("randaugment", v2.RandAugment, 32), ("trivialaugment", v2.TrivialAugmentWide, 32),
    ("autoaugment", v2.AutoAugment, 32), ("autoaugment", v2.AutoAugment, 128),
])
def test_the_policy_runs_on_the_uint8_image_in_training_only(name, kind, size):
    cfg = TransformConfig(preset="none", auto_augment=name)
    train = build_transform(cfg, train=True, image_size=size)
    steps = list(train.transforms)
    (policy,) = [t for t in steps if isinstance(t, kind)]
    assert steps.index(policy) < next(i for i, t in enumerate(steps) if isinstance(t, v2.ToImage))
    if kind is v2.AutoAugment:  # the policy searched on data of this size
        small = v2.AutoAugmentPolicy.CIFAR10 if size <= 64 else v2.AutoAugmentPolicy.IMAGENET
        assert policy.policy == small
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
    outputs = [train(image) for _ in range(8)]
    assert all(o.dtype == torch.float32 and o.shape == (3, size, size) for o in outputs)
    assert any(not torch.equal(o, outputs[0]) for o in outputs)  # it changes the image
    evaluation = build_transform(cfg, train=False, image_size=size)
    assert not any(isinstance(t, kind) for t in evaluation.transforms)


def test_random_erasing_erases_a_rectangle_after_normalisation():
    cfg = TransformConfig(preset="none", random_erasing=1.0)
    train = build_transform(cfg, train=True, image_size=32, mean_std=([0.5] * 3, [0.5] * 3))
    assert isinstance(train.transforms[-1], v2.RandomErasing)
    torch.manual_seed(0)
    out = train(torch.full((3, 32, 32), 255, dtype=torch.uint8))  # normalised to 1.0
    erased = (out == 0).all(dim=0)
    assert 0.02 * 32 * 32 <= erased.sum() <= 0.34 * 32 * 32  # torchvision's 2-33% of the area
    rows, cols = erased.any(dim=1).nonzero(), erased.any(dim=0).nonzero()
    assert erased.sum() == len(rows) * len(cols)  # one rectangle
    assert not any(isinstance(t, v2.RandomErasing)
                   for t in build_transform(cfg, train=False, image_size=32).transforms)


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_batches_carry_mixed_labels(mixup, cutmix):
    mix = label_mixing(TransformConfig(mixup=mixup, cutmix=cutmix), num_classes=4)
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 8, 8).contiguous()
    labels = torch.tensor([0, 1, 2, 3])
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        mixed, targets = mix(images, labels)
        assert targets.shape == (4, 4)
        assert torch.allclose(targets.sum(dim=1), torch.ones(4))
        # each image is itself and its neighbour in the batch, in the proportion of its label
        lam = targets[1, 1]
        assert torch.allclose(targets[1, 0], 1 - lam)
        assert torch.allclose(mixed[1].mean(), lam * 1 + (1 - lam) * 0, atol=1e-5)
        blended = not torch.all((mixed[1] == 0) | (mixed[1] == 1))
        seen.add("mixup" if blended else "cutmix")
    if not cutmix:
        assert seen == {"mixup"}
    elif not mixup:
        assert seen == {"cutmix"}
    else:
        assert seen == {"mixup", "cutmix"}  # one of the two per batch
    assert label_mixing(TransformConfig(), num_classes=4) is None


def test_the_loss_takes_the_mixed_labels_with_class_weights_and_smoothing():
    cfg = build_config(overrides={"transforms.mixup": 0.4, "optim.class_weights": [1.0, 3.0],
                                  "optim.label_smoothing": 0.1})
    loss_fn = create_loss(cfg.optim, [1.0, 3.0])
    torch.manual_seed(0)
    logits, soft = torch.randn(6, 2), torch.tensor([[0.7, 0.3]] * 6)
    smoothed = soft * 0.9 + 0.1 / 2
    weights = torch.tensor([1.0, 3.0])
    expected = -(weights * smoothed * logits.log_softmax(dim=1)).sum(dim=1).mean()
    assert torch.allclose(loss_fn(logits, soft), expected)


def _state_with_mixing(mix) -> tuple[TrainState, list]:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    seen_targets = []

    def loss_fn(logits, targets):
        seen_targets.append(targets)
        return torch.nn.functional.cross_entropy(logits, targets)

    state = TrainState(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                       scheduler=type("S", (), {"step_batch": lambda self: None})(),
                       loss_fn=loss_fn, device=torch.device("cpu"), label_mixing=mix)
    return state, seen_targets


def test_the_loop_trains_on_mixed_batches_and_counts_accuracy_on_the_own_labels():
    mix = label_mixing(TransformConfig(mixup=0.4), num_classes=3)
    state, seen = _state_with_mixing(mix)
    batches = [(torch.rand(4, 3, 4, 4), torch.tensor([0, 1, 2, 0])) for _ in range(3)]
    metrics = train_one_epoch(state, batches)
    assert len(seen) == 3 and all(t.shape == (4, 3) for t in seen)
    assert 0.0 <= metrics["train_acc"] <= 1.0 and metrics["train_samples"] == 12
    plain, seen_plain = _state_with_mixing(None)
    train_one_epoch(plain, batches)
    assert all(t.ndim == 1 for t in seen_plain)


def _tiny(tmp_path: Path, data: Path, **overrides: object):
    values = {"data.source": str(data), "model.name": "lenet", "loader.batch_size": 8,
              "train.epochs": 2, "sched.warmup_epochs": 0.0, "log.progress": "off",
              "log.tensorboard": False, "log.output": str(tmp_path / "runs"),
              "data.root": str(tmp_path / "cache")}
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return build_config(overrides=values)


@pytest.mark.parametrize("loader", ["memory", "dataloader"])
def test_mixup_and_cutmix_train_in_both_loaders_with_class_weights(tmp_path, make_image_folder,
                                                                   loader):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=8, size=32)
    result = api.train(_tiny(tmp_path, data, transforms__mixup=0.4, transforms__cutmix=1.0,
                             optim__class_weights="auto", data__loader=loader,
                             log__name="mixed"))
    saved = (result.run_dir / "config.yaml").read_text()
    assert f"data.loader: {loader}" in saved
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text()
            .splitlines()]
    assert len(rows) == 2 and all(r["train_loss"] > 0 for r in rows)


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment"])
def test_a_policy_trains_in_the_memory_loader_and_resumes_exactly(tmp_path, make_image_folder,
                                                                  policy):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=6, size=32)
    common = dict(transforms__auto_augment=policy, transforms__random_erasing=0.25,
                  train__epochs=2, train__deterministic=True, data__loader="auto")
    whole = api.train(_tiny(tmp_path, data, log__name="whole", **common))
    assert "data.loader: memory" in (whole.run_dir / "config.yaml").read_text()
    resumed = interrupt_and_resume(_tiny(tmp_path, data, log__name="split", **common), 1)
    assert_same_weights(whole.run_dir, resumed.run_dir)


def test_the_memory_loader_applies_the_drawn_policy_to_its_batches():
    from imgcls.data.batch_policies import apply_policy, draw_policy
    from imgcls.data.memory import MemoryLoader
    from imgcls.runtime import augmentation_seed

    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    loader = MemoryLoader(images, torch.arange(10), batch_size=10, train=True, shuffle=False,
                          auto_augment="trivialaugment")
    (batch, _), = list(loader)
    g = torch.Generator().manual_seed(augmentation_seed(0, 0, 0))
    expected = apply_policy(images, draw_policy("trivialaugment", 10, (16, 16), g))
    torch.testing.assert_close(batch, expected.float() / 255)
    plain = MemoryLoader(images, torch.arange(10), batch_size=10, train=True, shuffle=False)
    assert not torch.equal(next(iter(plain))[0], batch)


@pytest.mark.slow
def test_a_run_with_cutmix_resumes_exactly(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=12, size=32)
    common = dict(train__epochs=3, train__deterministic=True, transforms__cutmix=1.0,
                  transforms__mixup=0.4)
    whole = api.train(_tiny(tmp_path, data, log__name="whole", **common))
    resumed = interrupt_and_resume(_tiny(tmp_path, data, log__name="split", **common), 1)
    assert_same_weights(whole.run_dir, resumed.run_dir)


# ------------------------------------------------------------------ random erasing, batched


def _rectangles(erased: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(erased?, area fraction, log aspect h/w) of each ``[N, H, W]`` bool mask's rectangle."""
    rows, cols = erased.any(dim=2).sum(dim=1), erased.any(dim=1).sum(dim=1)
    hit = rows > 0
    h, w = erased.shape[1:]
    area = (rows * cols).float() / (h * w)
    aspect = (rows[hit].float() / cols[hit].float()).log()
    return hit, area[hit], aspect


def test_batch_erasing_draws_as_torchvision_does():
    from imgcls.data.batch_ops import apply_erasing, draw_erasing

    n, size, p = 6000, 32, 0.5
    g = torch.Generator().manual_seed(0)
    ours = apply_erasing(torch.ones(n, 1, size, size),
                         *draw_erasing(n, p, size, size, g, torch.device("cpu")))[:, 0] == 0
    torch.manual_seed(0)
    erase = v2.RandomErasing(p=p)
    theirs = torch.stack([erase(torch.ones(1, size, size))[0] == 0 for _ in range(n)])
    (hit_a, area_a, aspect_a), (hit_b, area_b, aspect_b) = _rectangles(ours), _rectangles(theirs)
    assert hit_a.float().mean().item() == pytest.approx(hit_b.float().mean().item(), abs=0.03)
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert area_a.quantile(q).item() == pytest.approx(area_b.quantile(q).item(), abs=0.02), q
        assert (aspect_a.quantile(q).item()
                == pytest.approx(aspect_b.quantile(q).item(), abs=0.12)), q
    for erased in (ours, theirs):  # one rectangle, inside the image
        hit, area, _ = _rectangles(erased)
        assert torch.equal(erased.sum(dim=(1, 2))[hit].float() / size**2, area)


def test_the_memory_loader_erases_and_trains(tmp_path, make_image_folder):
    from imgcls.data.memory import Augmentation, MemoryLoader, unsupported_transforms

    cfg = TransformConfig(preset="none", random_erasing=1.0)
    assert unsupported_transforms(cfg, 32) == []
    images = torch.full((16, 3, 32, 32), 255, dtype=torch.uint8)
    loader = MemoryLoader(images, torch.zeros(16, dtype=torch.long), batch_size=8, train=True,
                          augment=Augmentation.from_transforms(cfg), mean_std=([0.5] * 3,
                                                                               [0.5] * 3))
    batches = [x for x, _ in loader]
    erased = torch.cat(batches)[:, 0] == 0
    hit, area, _ = _rectangles(erased)
    assert hit.float().mean() > 0.9 and (area >= 0.015).all() and (area <= 0.34).all()
    assert (torch.cat(batches) != 0).any()  # the rest of each image stays
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=6, size=32)
    result = api.train(_tiny(tmp_path, data, transforms__random_erasing=0.5, train__epochs=1,
                             log__name="erase"))
    assert "data.loader: memory" in (result.run_dir / "config.yaml").read_text()
