"""The photo cache and loader: decoded once (memory-mapped beyond the memory budget), picked by
``data.loader=auto`` for photos trained with random resized crops, flips at torchvision's rate,
validation pixels equal to the DataLoader's, a full disk, bad files, exact resume."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_weights, interrupt_and_resume
from PIL import Image

from imgcls import api
from imgcls.config import build_config
from imgcls.data import folder as folder_module
from imgcls.data import photo_cache
from imgcls.data.folder import ImageFileDataset, scan_folder
from imgcls.data.photo_cache import CacheWriteError, photo_store, stored_size
from imgcls.data.photo_loader import PhotoAugmentation, PhotoLoader, photo_unsupported
from imgcls.data.pipeline import build_eval_loader, eval_dataloader, memory_eval_loader
from imgcls.errors import ImgclsError

SIZE = 32  # training size in these tests (lenet's); photos are larger and of several shapes


def _photos(root: Path, per_class: int = 6, seed: int = 0) -> Path:
    """Class folders of JPEG and PNG 'photos' of varied shapes, larger than SIZE."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(("cats", "dogs")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(40, 80, size=2))
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            pixels[..., k] = 255  # learnable: the class tints a channel
            ext = "jpg" if i % 2 else "png"
            Image.fromarray(pixels).save(root / name / f"{name}{i}.{ext}")
    return root


def _dataset(root: Path) -> ImageFileDataset:
    samples, classes = scan_folder(root)
    return ImageFileDataset(samples, classes, str(root))


def _cfg(tmp_path: Path, data: Path, **overrides: object):
    values = {
        "data.source": str(data), "data.root": str(tmp_path / "root"), "model.name": "lenet",
        "transforms.image_size": SIZE, "transforms.random_resized_crop": True,
        "transforms.hflip": 0.5, "transforms.center_crop": True, "loader.batch_size": 4,
        "train.epochs": 2, "sched.warmup_epochs": 0.0, "log.progress": "off",
        "log.tensorboard": False, "log.output": str(tmp_path / "runs"), "train.amp": "off",
        "data.val_fraction": 0.25,
    }
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return build_config(overrides=values)


def test_the_cache_holds_each_photo_once_with_its_shorter_side_resized(tmp_path):
    data = _photos(tmp_path / "photos")
    dataset = _dataset(data)
    store = photo_store(dataset, 40, tmp_path / "cache")
    assert len(store) == len(dataset) and store.memory_mapped
    assert isinstance(store.pixels, np.memmap)  # read by the page cache, not held in memory
    for k, (path, label) in enumerate(dataset.samples):
        with Image.open(path) as img:
            w, h = stored_size(*img.size, 40)
            assert min(img.size) <= 40 or min(w, h) == 40  # never enlarged
        assert (int(store.heights[k]), int(store.widths[k])) == (h, w)
        assert int(store.labels[k]) == label
        if path.endswith(".png"):  # lossless: exactly Pillow's resize of the file
            with Image.open(path) as img:
                expected = np.asarray(img.convert("RGB").resize((w, h), Image.BILINEAR))
            assert np.array_equal(store.crop(k, 0, 0, h, w), expected)
    in_memory = photo_store(dataset, 40, tmp_path / "cache", in_memory=True)
    assert not in_memory.memory_mapped and np.array_equal(in_memory.pixels, store.pixels)


def test_the_cache_is_decoded_once_and_rebuilt_when_a_photo_changes(tmp_path, monkeypatch):
    data = _photos(tmp_path / "photos")
    decoded = []
    load = folder_module.load_rgb
    monkeypatch.setattr(photo_cache, "load_rgb",
                        lambda *a, **k: decoded.append(a[0]) or load(*a, **k))
    photo_store(_dataset(data), 40, tmp_path / "cache")
    photo_store(_dataset(data), 40, tmp_path / "cache")
    assert len(decoded) == 12  # the second store read the cache
    photo = next(data.glob("cats/*.png"))
    Image.new("RGB", (50, 60), "red").save(photo)
    store = photo_store(_dataset(data), 40, tmp_path / "cache")
    assert len(decoded) == 24 and len(store) == 12


def test_a_full_disk_leaves_no_cache_and_auto_falls_back(tmp_path, monkeypatch, capsys):
    data = _photos(tmp_path / "photos")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(photo_cache, "atomic_write", full)
    with pytest.raises(CacheWriteError, match="No space left on device"):
        photo_store(_dataset(data), 40, tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    monkeypatch.undo()
    monkeypatch.setattr(photo_cache, "_write", lambda *a: (_ for _ in ()).throw(
        CacheWriteError("cannot write the photo cache in X: No space left on device")))
    result = api.train(_cfg(tmp_path, data, train__epochs=1))
    err = capsys.readouterr().err
    assert "No space left on device: reading the photos with a DataLoader" in err
    assert "read by a DataLoader" in err and result.epochs == 1
    with pytest.raises(ImgclsError, match="No space left"):
        api.train(_cfg(tmp_path, data, train__epochs=1, data__loader="memory"))


def test_an_unreadable_photo_is_named_or_skipped(tmp_path):
    data = _photos(tmp_path / "photos")
    bad = data / "dogs" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImgclsError, match="broken.jpg"):
        photo_store(_dataset(data), 40, tmp_path / "cache")
    store = photo_store(_dataset(data), 40, tmp_path / "cache", skip_bad=True)
    assert len(store) == 12 and len(store.skipped) == 1 and "broken.jpg" in store.skipped[0]


def test_flip_rate_and_batches_through_the_loader(tmp_path):
    # one photo whose pixels grow left to right: a flipped crop grows right to left
    ramp = np.tile(np.linspace(0, 255, 80).astype(np.uint8)[None, :, None], (50, 1, 3))
    (tmp_path / "p" / "a").mkdir(parents=True)
    Image.fromarray(ramp).save(tmp_path / "p" / "a" / "ramp.png")
    store = photo_store(_dataset_of_one(tmp_path / "p"), 60, tmp_path / "cache")
    store.labels = store.labels.repeat(2000)  # the same photo 2000 times
    store.offsets = np.repeat(store.offsets, 2000)
    store.heights, store.widths = store.heights.repeat(2000), store.widths.repeat(2000)
    loader = PhotoLoader(store, image_size=SIZE, batch_size=500,
                         augment=PhotoAugmentation(hflip=0.3))
    flipped = torch.cat([(x[:, 0, :, -1] < x[:, 0, :, 0]).all(1) for x, _ in loader])
    assert len(flipped) == 2000 and abs(flipped.float().mean() - 0.3) < 0.04
    loader.set_epoch(1)
    again = torch.cat([(x[:, 0, :, -1] < x[:, 0, :, 0]).all(1) for x, _ in loader])
    assert not torch.equal(flipped, again)  # a fresh draw each epoch


def _dataset_of_one(root: Path) -> ImageFileDataset:
    (root / "b").mkdir(exist_ok=True)
    Image.new("RGB", (40, 40)).save(root / "b" / "other.png")
    samples, classes = scan_folder(root)
    return ImageFileDataset([s for s in samples if s[0].endswith("ramp.png")], classes)


def test_auto_picks_the_photo_loader_and_says_where_the_cache_is(tmp_path, capsys):
    data = _photos(tmp_path / "photos")
    cfg = _cfg(tmp_path, data, data__loader="auto", train__epochs=1)
    assert photo_unsupported(cfg.transforms, SIZE, explicit=cfg.explicit) == []
    api.train(cfg)
    err = capsys.readouterr().err
    assert "decoded once into the photo cache" in err and ".imgcls-cache/photos-" in err
    lines = api.dry_run(cfg)
    assert any("photo cache" in line for line in lines)
    # a transform it cannot do, or the disk budget, sends photos to the DataLoader
    api.train(_cfg(tmp_path, data, data__loader="auto", train__epochs=1,
                   transforms__rotation=5.0))
    assert "read by a DataLoader" in capsys.readouterr().err
    api.train(_cfg(tmp_path, data, data__loader="auto", train__epochs=1,
                   data__disk_budget_mb=0))
    assert "read by a DataLoader" in capsys.readouterr().err


def test_validation_pixels_equal_the_dataloaders(tmp_path):
    data = _photos(tmp_path / "photos")
    cfg = _cfg(tmp_path, data)
    dataset = _dataset(data)
    from imgcls.data.pipeline import Preprocessing

    prep = Preprocessing(SIZE, ([0.5] * 3, [0.25] * 3))
    fast = memory_eval_loader(cfg, dataset, prep, torch.device("cpu"))
    files = eval_dataloader(cfg, dataset, prep, None, torch.device("cpu"))
    for (a, ya), (b, yb) in zip(fast, files, strict=True):
        assert torch.equal(ya, yb)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert build_eval_loader(cfg, dataset, prep, None, torch.device("cpu")) is not None


def test_photo_training_resumes_exactly(tmp_path):
    data = _photos(tmp_path / "photos", per_class=10)
    common = dict(train__epochs=3, train__deterministic=True, data__loader="memory",
                  transforms__color_jitter=[0.3, 0.3, 0.3, 0.05], transforms__grayscale=0.2,
                  transforms__random_erasing=0.3, transforms__auto_augment="trivialaugment")
    whole = api.train(_cfg(tmp_path, data, log__name="whole", **common))
    assert list((tmp_path / "root" / ".imgcls-cache").glob("photos-*/pixels.u8"))
    resumed = interrupt_and_resume(_cfg(tmp_path, data, log__name="split", **common), 1)
    assert_same_weights(whole.run_dir, resumed.run_dir)
    assert resumed.best_metric == whole.best_metric


def test_beyond_the_memory_budget_the_cache_is_memory_mapped_and_scores_match_evaluate(
        tmp_path, capsys):
    data = _photos(tmp_path / "photos", per_class=10)
    result = api.train(_cfg(tmp_path, data, data__loader="auto", data__memory_budget_mb=0,
                            log__name="mapped"))
    err = capsys.readouterr().err
    assert "photo cache" in err and "memory-mapped" in err
    # validation during training and `imgcls evaluate` decode the same pixels: the same score
    summary = api.evaluate_checkpoint(result.run_dir / "checkpoints" / "last.pt", device="cpu")
    assert summary["top1"] == pytest.approx(result.last_metrics["val_acc"], abs=1e-12)
    assert summary["loss"] == pytest.approx(result.last_metrics["val_loss"], abs=1e-5)
