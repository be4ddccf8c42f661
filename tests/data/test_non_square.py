"""Non-square inputs: ``transforms.image_size=[H, W]`` through the config, both memory loaders, the
DataLoader's transforms, the checkpoint, evaluate, predict and an ONNX export; square sizes keep
the int they always had."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import _make_image_folder, assert_one_line_error, run_cli
from PIL import Image

from imgcls import api
from imgcls.config import TransformConfig, build_config
from imgcls.config.sizes import image_size, parse_size, saved_size, size_hw, size_text
from imgcls.data.decode_cache import decode_to_tensor
from imgcls.data.folder import ImageFileDataset, scan_folder
from imgcls.data.memory import Augmentation, MemoryLoader
from imgcls.data.photo_cache import photo_store
from imgcls.data.photo_loader import PhotoAugmentation, PhotoLoader
from imgcls.data.pipeline import (
    Preprocessing,
    decoded_bytes,
    eval_dataloader,
    memory_eval_loader,
    photo_side,
)
from imgcls.data.transforms import build_transform, eval_resize, resolved_preset
from imgcls.errors import ImgclsError
from imgcls.models import get_model_info
from imgcls.runs.record import CheckpointRecord

HW = (24, 40)  # the non-square size of these tests: wider than high


def _dataset(root: Path) -> ImageFileDataset:
    samples, classes = scan_folder(root)
    return ImageFileDataset(samples, classes, str(root))


def _photos(root: Path, per_class: int = 4) -> Path:
    """PNG photos of several shapes, larger than HW."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(("cats", "dogs")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(40, 90, size=2))
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            pixels[..., k] = 255
            Image.fromarray(pixels).save(root / name / f"{name}{i}.png")
    return root


# --------------------------------------------------------------------------- the config key


@pytest.mark.parametrize(("given", "held"), [
    (32, 32), ([32], 32), ([32, 32], 32), ((32, 32), 32), ([24, 40], [24, 40]),
    ((24, 40), [24, 40]), (None, None),
])
def test_image_size_takes_an_int_one_int_or_height_and_width(given, held):
    assert build_config(overrides={"transforms.image_size": given}).transforms.image_size == held


@pytest.mark.parametrize("bad", [0, [0, 8], [8, -1], [1, 2, 3], [], "abc", [1.5, 2], True,
                                 [24, "a"]])
def test_a_bad_image_size_is_one_line_naming_the_key(bad):
    with pytest.raises(ImgclsError) as caught:
        build_config(overrides={"transforms.image_size": bad})
    message = str(caught.value)
    assert "transforms.image_size" in message and "\n" not in message


def test_the_size_helpers():
    assert size_hw(32) == (32, 32) and size_hw([24, 40]) == HW and size_hw([7]) == (7, 7)
    assert image_size([32, 32]) == 32 and image_size([24, 40]) == HW
    assert saved_size((32, 32)) == 32 and saved_size(HW) == [24, 40]
    assert size_text(32) == "32x32" and size_text(HW) == "24x40"
    assert parse_size("32") == 32 and parse_size("32x32") == 32
    assert parse_size("24x40") == HW and parse_size("24,40") == HW
    for bad in ("", "24x", "1x2x3", "0x5", "a"):
        with pytest.raises(ImgclsError, match="--input-size"):
            parse_size(bad)


# --------------------------------------------------------------------------- transforms


def test_the_dataloader_transforms_give_height_by_width():
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in ((30, 50), (60, 20))]
    configs = {
        "random crop": (True, TransformConfig(random_crop=True, crop_padding=[4])),
        "random resized crop": (True, TransformConfig(random_resized_crop=True)),
        "resize": (False, TransformConfig(preset="none")),
        "center crop": (False, TransformConfig(center_crop=True)),
        "resize then crop": (False, TransformConfig(resize=50)),
    }
    for name, (train, cfg) in configs.items():
        transform = build_transform(cfg, train=train, image_size=HW)
        for image in images:
            assert tuple(transform(image).shape) == (3, *HW), name


def test_evaluation_resizes_the_shorter_side_for_the_longer_crop_side():
    cfg = TransformConfig(center_crop=True)
    assert eval_resize(cfg, HW) == round(40 * 256 / 224)
    assert eval_resize(cfg, 32) == round(32 * 256 / 224)  # square: as before
    assert eval_resize(TransformConfig(resize=50), HW) == 50
    assert resolved_preset("auto", HW) == "cifar"
    assert resolved_preset("auto", (32, 80)) == "imagenet"  # the longer side decides


def test_the_memory_loader_trains_and_evaluates_at_height_by_width(tmp_path):
    data = _make_image_folder(tmp_path / "imgs", per_class=5)  # 20..48 px, of several shapes
    dataset = _dataset(data)
    images, labels = decode_to_tensor(dataset, HW, cache_dir=tmp_path / "cache")
    assert tuple(images.shape) == (10, 3, *HW) and len(labels) == 10
    again, _ = decode_to_tensor(dataset, HW, cache_dir=tmp_path / "cache")  # from the cache
    assert torch.equal(again, images)
    augment = Augmentation(crop_padding=(4,), hflip=0.5, cutout=8)
    loader = MemoryLoader(images, labels, batch_size=4, train=True, augment=augment)
    assert [tuple(x.shape) for x, _ in loader] == [(4, 3, *HW), (4, 3, *HW), (2, 3, *HW)]
    # evaluation: the decoded pixels are the DataLoader's, centre crop and all
    cfg = build_config(overrides={"transforms.image_size": list(HW), "data.root": str(tmp_path),
                                  "transforms.center_crop": True, "loader.eval_batch_size": 4})
    prep = Preprocessing(HW, ([0.5] * 3, [0.25] * 3))
    fast = memory_eval_loader(cfg, dataset, prep, torch.device("cpu"))
    files = eval_dataloader(cfg, dataset, prep, None, torch.device("cpu"))
    for (a, ya), (b, yb) in zip(fast, files, strict=True):
        assert a.shape[-2:] == HW and torch.equal(ya, yb)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert decoded_bytes(cfg, 10, prep) == 10 * 3 * 24 * 40


def test_the_photo_loader_crops_height_by_width(tmp_path):
    dataset = _dataset(_photos(tmp_path / "photos"))
    cfg = build_config(overrides={"transforms.image_size": list(HW)})
    prep = Preprocessing(HW, None)
    side = photo_side(cfg, prep)
    assert side == round(40 * 256 / 224)
    store = photo_store(dataset, side, tmp_path / "cache")
    loader = PhotoLoader(store, image_size=HW, batch_size=3, seed=1,
                         augment=PhotoAugmentation(hflip=0.5, cutout=6))
    assert [tuple(x.shape) for x, _ in loader] == [(3, 3, *HW), (3, 3, *HW), (2, 3, *HW)]


# --------------------------------------------------------------------------- models and records


def test_a_fixed_size_model_refuses_a_non_square_size_in_one_line(tmp_path, capsys):
    with pytest.raises(ImgclsError, match=r"does not suit lenet, which takes 32x32 images only"):
        get_model_info("lenet").check_size((32, 40), "transforms.image_size=[32, 40]")
    data = _make_image_folder(tmp_path / "imgs", per_class=2)
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--model", "lenet",
                           "transforms.image_size=[32,40]", "--dry-run")
    assert_one_line_error(code, err, "transforms.image_size=[32, 40] does not suit lenet")


def test_models_summary_takes_height_by_width(capsys):
    code, out, err = run_cli(capsys, "models", "resnet20", "--input-size", "24x40")
    assert code == 0, err
    assert out.splitlines()[0] == "resnet20: 10 classes, 3x24x40 input"
    assert "input shape:        [1, 3, 24, 40]" in out
    code, _, err = run_cli(capsys, "models", "lenet", "--input-size", "32x40")
    assert_one_line_error(code, err, "--input-size 32x40", "lenet takes 32 px")


def test_a_record_holds_height_and_width():
    record = CheckpointRecord(model={}, config={}, classes=["a", "b"], input_size=[24, 40])
    record.check("ckpt.pt")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten())
    record.check_model(model, "ckpt.pt")
    for bad in ([24, 40, 3], [0, 40], [24.5, 40]):
        record.input_size = bad
        with pytest.raises(ImgclsError, match="input_size must be a positive whole number"):
            record.check("ckpt.pt")


# --------------------------------------------------------------------------- end to end

FAST = {"train.epochs": 1, "loader.batch_size": 8, "sched.warmup_epochs": 0.0,
        "log.progress": "off", "log.tensorboard": False, "train.amp": "off"}


def _train(tmp_path: Path, data: Path, name: str, **overrides: object) -> Path:
    values = {**FAST, "data.source": str(data), "data.root": str(tmp_path / "root"),
              "log.output": str(tmp_path / "runs"), "log.name": name, **overrides}
    return api.train(build_config(overrides=values)).run_dir


@pytest.mark.slow
def test_train_evaluate_predict_export_at_height_by_width(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from imgcls.deploy import predict
    from imgcls.deploy.export import export_checkpoint
    from imgcls.deploy.load import load_model

    data = _make_image_folder(tmp_path / "imgs", per_class=6, layout="train_val")
    overrides = {"model.name": "resnet20", "transforms.image_size": list(HW)}
    dry = api.dry_run(overrides={**FAST, "data.source": str(data), **overrides})
    assert any(line.startswith("  input:     24x40,") for line in dry)
    run = _train(tmp_path, data, "wide", **overrides)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["transforms"]["image_size"] == [24, 40]
    assert saved["resolved"]["transforms.image_size"] == [24, 40]
    ckpt = run / "checkpoints" / "last.pt"
    assert torch.load(ckpt, weights_only=True)["input_size"] == [24, 40]
    loaded = load_model(ckpt)
    assert loaded.input_size == HW
    summary = api.evaluate_checkpoint(ckpt, split="val", device="cpu", output=tmp_path / "eval")
    assert summary["n"] == 12
    report = predict.predict(ckpt, [data / "val"], top_k=1, device="cpu")
    assert len(report.results) == 12 and report.failed == 0
    exported = export_checkpoint(ckpt, fmt="onnx")
    assert exported.verified and exported.input_shape == ["N", 3, 24, 40]
    assert json.loads(exported.sidecar.read_text())["input_size"] == [24, 40]
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 24, 40]
    x = torch.randn(3, 3, *HW)
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.inference_mode():
        torch.testing.assert_close(got, loaded.model(x), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_a_square_run_still_saves_an_int(tmp_path):
    data = _make_image_folder(tmp_path / "imgs", per_class=4, size=32)
    run = _train(tmp_path, data, "square", **{"model.name": "lenet",
                                              "transforms.image_size": [32, 32]})
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["transforms"]["image_size"] == 32
    assert saved["resolved"]["transforms.image_size"] == 32
    payload = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert payload["input_size"] == 32 and isinstance(payload["input_size"], int)
    assert payload["config"]["transforms"]["image_size"] == 32


@pytest.mark.slow
@pytest.mark.parametrize(("loader", "extra", "kind"), [
    ("dataloader", {}, "dataloader"),
    ("memory", {"transforms.random_resized_crop": True, "transforms.center_crop": True}, "photos"),
])
def test_each_loader_trains_at_height_by_width(tmp_path, capsys, loader, extra, kind):
    from imgcls.data.pipeline import PIPELINES

    data = _photos(tmp_path / "photos", per_class=6)
    cfg = build_config(overrides={
        **FAST, "data.source": str(data), "data.root": str(tmp_path / "root"),
        "log.output": str(tmp_path / "runs"), "model.name": "resnet20",
        "transforms.image_size": list(HW), "data.loader": loader, **extra})
    dry = "\n".join(api.dry_run(cfg))
    assert "one batch (8, 3, 24, 40)" in dry and "input:     24x40," in dry
    assert api.train(cfg).best_metric is not None
    assert PIPELINES[kind] in capsys.readouterr().err
