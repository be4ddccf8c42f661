"""Model zoo: seed CNNs, torchvision models, pretrained files, freezing. CPU, tiny inputs, fast.

Big torchvision models are built on the "meta" device (shapes only, no memory, no time).
"""

from __future__ import annotations

import contextlib
import logging
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from imgcls.config import ModelConfig, OptimConfig
from imgcls.errors import ImgclsError
from imgcls.models import (
    MODELS,
    count_parameters,
    create_model,
    find_head,
    get_model_info,
    head_parameters,
    list_models,
    load_pretrained_file,
    model_names,
    set_train_mode,
)
from imgcls.models import torchvision_models as tvm
from imgcls.models.factory import build_on_meta
from imgcls.optim import create_optimizer
from imgcls.registry import Registry

SEEDS = ["lenet", "cifar10_net", "simple_v3"]


# --------------------------------------------------------------------------- parameter counts
# Computed by hand from the layer shapes: weights + biases.


def conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def linear(fin: int, fout: int) -> int:
    return fin * fout + fout


def bn(c: int) -> int:
    return 2 * c  # weight and bias; running stats are buffers, not parameters


def expected_params(name: str, cin: int, n: int) -> int:
    if name == "lenet":
        return conv(cin, 6, 5) + conv(6, 16, 5) + linear(400, 120) + linear(120, 84) + linear(84, n)
    if name == "cifar10_net":
        return (conv(cin, 32, 5) + conv(32, 32, 5) + conv(32, 64, 5) + linear(1024, 64)
                + linear(64, n))
    assert name == "simple_v3"
    chans = [(cin, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]
    return sum(conv(a, b, 3) + bn(b) for a, b in chans) + linear(2048, 64) + linear(64, n)


def test_hand_counts_match_the_published_numbers() -> None:
    # The numbers quoted for the seeds (3x32x32 and 1x32x32 inputs, 10 classes).
    assert expected_params("lenet", 3, 10) == 62_006
    assert expected_params("lenet", 1, 10) == 61_706
    assert expected_params("cifar10_net", 3, 10) == 145_578
    assert expected_params("cifar10_net", 1, 10) == 143_978
    assert expected_params("simple_v3", 3, 10) == 419_690
    assert expected_params("simple_v3", 1, 10) == 419_114


@pytest.mark.parametrize("in_channels", [3, 1])
@pytest.mark.parametrize("name", SEEDS)
def test_seed_models_forward_backward_and_counts(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    model = create_model(ModelConfig(name=name, in_channels=in_channels), num_classes=7)
    assert sum(p.numel() for p in model.parameters()) == expected_params(name, in_channels, 7)
    assert count_parameters(name, 7, in_channels) == expected_params(name, in_channels, 7)
    out = model(torch.randn(4, in_channels, 32, 32))
    assert out.shape == (4, 7)
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_the_seed_models_are_registered_first() -> None:
    assert MODELS.names()[: len(SEEDS)] == SEEDS


def test_seed_layer_names_match_the_original_scripts() -> None:
    lenet = create_model(ModelConfig(name="lenet"), 10)
    assert [n for n, _ in lenet.named_children()] == ["conv1", "pool", "conv2", "fc1", "fc2", "fc3"]
    v3 = create_model(ModelConfig(name="simple_v3"), 10)
    assert list(v3.state_dict())[:3] == ["model.0.weight", "model.0.bias", "model.2.weight"]
    assert find_head(v3)[0] == "model.26"
    net = create_model(ModelConfig(name="cifar10_net"), 10)
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())  # the original has none


def test_model_info() -> None:
    info = get_model_info("simple_v3")
    assert (info.source, info.input_size, info.default_normalize, info.fixed_size) == (
        "imgcls", 32, "dataset", True)
    info = get_model_info("resnet18")
    assert (info.source, info.input_size, info.default_normalize) == (
        "torchvision", 224, "imagenet")
    assert get_model_info("inception_v3").input_size == 299
    vit = get_model_info("vit_b_16", pretrained="IMAGENET1K_SWAG_E2E_V1")
    assert vit.input_size == 384 and vit.fixed_size
    names = [i.name for i in list_models()]
    assert names[:3] == SEEDS and {"resnet18", "vgg16", "vit_b_16"} <= set(names)
    ours = [i.name for i in list_models(include_torchvision=False)]
    assert ours[:3] == SEEDS and {"resnet20", "resnet56", "wrn16_8", "fastnet"} <= set(ours)


def test_torchvision_counts_on_meta_match_torchvision() -> None:
    # torchvision publishes each model's parameter count (1000 classes) with its weights.
    for name in ["vgg16", "vit_b_16", "resnet50", "regnet_x_400mf", "squeezenet1_0"]:
        published = torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]
        assert count_parameters(name, 1000) == published, name


def test_unknown_model_names_close_matches() -> None:
    with pytest.raises(ImgclsError, match=r"'resnet19'.*model\.name.*resnet18"):
        create_model(ModelConfig(name="resnet19"), 10)
    with pytest.raises(ImgclsError, match="simple_v3"):
        get_model_info("simple_v2")


# --------------------------------------------------------------------------- torchvision heads


@pytest.mark.parametrize(
    ("name", "head", "size"),
    [("resnet18", "fc", 32), ("mobilenet_v3_small", "classifier.3", 32),
     ("squeezenet1_0", "classifier.1", 64)],
)
@pytest.mark.parametrize("in_channels", [3, 1])
def test_torchvision_small_input(name: str, head: str, size: int, in_channels: int) -> None:
    model = create_model(ModelConfig(name=name, in_channels=in_channels), num_classes=5).eval()
    assert find_head(model)[0] == head
    with torch.no_grad():
        assert model(torch.randn(2, in_channels, size, size)).shape == (2, 5)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_resnets_from_scratch_start_each_block_as_the_identity(name: str) -> None:
    # as timm's ResNets: each block's last BatchNorm scales its branch by zero, so the block
    # passes its input through; the stem's BatchNorm keeps its ones
    model = create_model(ModelConfig(name=name), num_classes=3)
    blocks = [b for layer in (model.layer1, model.layer4) for b in layer]
    last_bns = [getattr(b, "bn3", None) or b.bn2 for b in blocks]
    assert all(bool((bn.weight == 0).all()) for bn in last_bns)
    assert bool((model.bn1.weight == 1).all())


@pytest.mark.parametrize("name", ["vgg16", "googlenet", "inception_v3", "vit_b_16", "maxvit_t"])
def test_torchvision_on_meta(name: str) -> None:
    info = get_model_info(name)
    with torch.device("meta"):
        model = create_model(ModelConfig(name=name, in_channels=1), num_classes=3)
        out = model.train()(torch.empty(2, 1, info.input_size, info.input_size))
    # A plain tensor even in train mode: googlenet / inception_v3's aux heads are off.
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)


def test_head_replacement_keeps_pretrained_body(monkeypatch: pytest.MonkeyPatch) -> None:
    # "default" weights, with the download replaced by a local random state_dict.
    src = torchvision.models.resnet18()
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict",
                        lambda self, *a, **k: src.state_dict())
    model = create_model(ModelConfig(name="resnet18", pretrained="default", in_channels=1), 4)
    assert model.fc.out_features == 4
    torch.testing.assert_close(model.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    # 1 channel: the RGB filters summed.
    torch.testing.assert_close(model.conv1.weight, src.conv1.weight.sum(1, keepdim=True))


def test_offline_weights_download_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    for pretrained in ("default", "IMAGENET1K_V1"):
        with pytest.raises(ImgclsError, match=r"offline.*model\.pretrained=PATH") as err:
            create_model(ModelConfig(name="resnet18", pretrained=pretrained), 10)
        assert "\n" not in str(err.value)


def test_bad_pretrained_values() -> None:
    with pytest.raises(ImgclsError, match="IMAGENET9K.*IMAGENET1K_V1"):
        create_model(ModelConfig(name="resnet18", pretrained="IMAGENET9K"), 10)
    with pytest.raises(ImgclsError, match="no downloadable weights"):
        create_model(ModelConfig(name="lenet", pretrained="default"), 10)


# --------------------------------------------------------------------------- pretrained files


def test_local_file_with_imagenet_head(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18.pt"
    torch.save(src.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="imgcls"):
        model = create_model(ModelConfig(name="resnet18", pretrained=str(path)), num_classes=5)
    assert "fc.weight" in caplog.text
    mine, theirs = model.state_dict(), src.state_dict()
    for key in theirs:
        if not key.startswith("fc."):
            assert torch.equal(mine[key], theirs[key]), key
    assert model.fc.weight.shape == (5, 512)


def test_local_file_with_new_head_and_checkpoint_wrapper(tmp_path: Path) -> None:
    src = create_model(ModelConfig(name="lenet"), 3)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 4},
               path)
    model = create_model(ModelConfig(name="lenet"), 3)
    report = load_pretrained_file(model, path)
    assert report.head == () and report.complete  # head already fits: nothing skipped
    assert len(report.loaded) == len(model.state_dict())
    for key, value in src.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_local_file_into_seed_cnn_new_classes_and_gray(tmp_path: Path) -> None:
    src = create_model(ModelConfig(name="simple_v3"), 10)
    path = tmp_path / "v3.pt"
    torch.save(src.state_dict(), path)
    model = create_model(ModelConfig(name="simple_v3", pretrained=str(path), in_channels=1), 2)
    torch.testing.assert_close(model.model[0].weight, src.model[0].weight.sum(1, keepdim=True))
    assert torch.equal(model.model[23].weight, src.model[23].weight)
    assert model.model[26].out_features == 2


def test_local_file_of_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "lenet.pt"
    torch.save(create_model(ModelConfig(name="lenet"), 10).state_dict(), path)
    with pytest.raises(ImgclsError, match=r"lenet\.pt does not fit.*missing"):
        create_model(ModelConfig(name="cifar10_net", pretrained=str(path)), 10)
    # resnet34 holds every resnet18 key with the same shape, plus more blocks: still refused.
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(ImgclsError, match="unexpected layer1.2"):
        create_model(ModelConfig(name="resnet18", pretrained=str(path)), 10)


def test_unreadable_or_missing_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(ImgclsError, match="notes.txt: cannot load"):
        create_model(ModelConfig(name="lenet", pretrained=str(text)), 10)
    with pytest.raises(ImgclsError, match="no such file"):
        create_model(ModelConfig(name="lenet", pretrained=str(tmp_path / "nope.pt")), 10)


# --------------------------------------------------------------------------- freezing


def test_freeze_trains_only_the_head_and_keeps_bn_stats(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "v3.pt"
    torch.save(create_model(ModelConfig(name="simple_v3"), 10).state_dict(), path)
    model = create_model(ModelConfig(name="simple_v3", pretrained=str(path), freeze=True), 3)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["model.26.weight", "model.26.bias"]
    assert {id(p) for p in head_parameters(model)} == {
        id(p) for p in model.parameters() if p.requires_grad}

    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = create_optimizer(model, OptimConfig(name="sgd", lr=0.1))
    set_train_mode(model)
    assert model.training and model.model[22].training  # dropout still trains
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.arange(8) % 3)
    loss.backward()
    opt.step()
    after = model.state_dict()
    for key, value in before.items():
        changed = not torch.equal(value, after[key])
        # Frozen weights and BN running stats (incl. num_batches_tracked) unchanged.
        assert changed == key.startswith("model.26."), key


def test_set_train_mode_without_freeze_trains_bn() -> None:
    model = create_model(ModelConfig(name="simple_v3"), 3).eval()
    set_train_mode(model)
    assert all(m.training for m in model.modules())


def test_freeze_torchvision_model() -> None:
    model = create_model(ModelConfig(name="mobilenet_v3_small", freeze=True), 3)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "classifier.3.weight", "classifier.3.bias"]


# --------------------------------------------------------------------------- registry


def test_registry() -> None:
    reg: Registry[object] = Registry("widget")

    @reg.register("alpha", size=1)
    def alpha() -> str:
        return "a"

    assert reg.names() == ["alpha"] and "alpha" in reg and len(reg) == 1
    assert reg.get("alpha") is alpha and reg.meta("alpha") == {"size": 1}
    with pytest.raises(ValueError, match="already registered"):
        reg.add("alpha", alpha)
    with pytest.raises(ImgclsError, match=r"widget 'Alpah' \(w\.name\); did you mean alpha"):
        reg.get("Alpah", key="w.name")
    with pytest.raises(ImgclsError, match=r"^unknown widget 'zzz'$"):
        reg.get("zzz")


# --------------------------------------------------------------------------- every model


# The registry test below first builds each model on the "meta" device (shapes only: no memory, no
# time) and runs it at its own input size. Then it trains one real step on the CPU, at a small
# input, for every model up to CPU_PARAMS parameters. The others take that step on "meta" too
# (shapes and the autograd graph, no arithmetic); none is left out. They are the big ones (vgg*,
# alexnet, convnext_small/base/large, efficientnet_b6/b7/v2_m/v2_l, resnet101/152,
# resnext101_*, wide_resnet*, regnet_x_8gf..32gf, regnet_y_8gf..128gf: seconds each to
# initialise and run on two cores) and the ones that cannot take a small input: vit_* and
# maxvit_t (a fixed 224+), swin_* (at least 224) and swin_v2_* (at least 256).
CPU_PARAMS = 30_000_000
SMALL = 75  # px: inception_v3's minimum; every other small-input model runs at 32 (or its min)


def test_the_registry_holds_every_model_imgcls_lists() -> None:
    # One registry: imgcls's models first, then every torchvision classifier, all listed.
    names = MODELS.names()
    assert [i.name for i in list_models()] == names
    assert set(torchvision.models.list_models(module=torchvision.models)) <= set(names)
    assert model_names("imgcls") == [i.name for i in list_models(include_torchvision=False)]
    assert model_names("torchvision") == list(tvm.available())
    assert MODELS.meta("resnet18") == {"source": "torchvision"}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny batches gain nothing from more threads, and on a busy machine they lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_trains_one_step(name: str) -> None:
    # Parametrised over the registry: a model added there is tested here, with nothing to list.
    info = get_model_info(name)
    # Built with its head at its own input size, on "meta". RegNets compute their widths with
    # tensors: build_on_meta builds them with only their weights on meta, then moves them there.
    model = build_on_meta(lambda: create_model(ModelConfig(name=name), num_classes=3))
    own = info.input_size
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, own, own, device="meta")).shape == (1, 3)

    size = own if info.fixed_size else max(info.min_size, 32)
    on_cpu = size <= SMALL and sum(p.numel() for p in model.parameters()) <= CPU_PARAMS
    device = "cpu" if on_cpu else "meta"
    with one_thread():
        if on_cpu:
            model = create_model(ModelConfig(name=name), num_classes=3)
        model.train()
        images = torch.randn(2, 3, size, size, device=device)
        logits = model(images)
        assert logits.shape == (2, 3)
        nn.functional.cross_entropy(logits, torch.tensor([0, 2], device=device)).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for _, p in trainable), name
