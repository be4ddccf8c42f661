"""imgcls explain: the Grad-CAM layer of every registered model, the honesty checks (the
pointing game on a trained model, the model-randomisation check), and the command's files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli
from PIL import Image
from scipy.stats import spearmanr
from torch import nn

from imgcls import api
from imgcls.config import build_config
from imgcls.config.train_keys import ModelConfig
from imgcls.deploy import predict
from imgcls.deploy.load import load_model
from imgcls.errors import ImgclsError
from imgcls.explain.attribution import MapView, heatmaps, hooked_layer, peak_of
from imgcls.explain.explainer import target_layer_for
from imgcls.explain.target_layer import TargetLayer, choose_target_layer, output_layout
from imgcls.models import MODELS, create_model, get_model_info
from imgcls.models.factory import build_on_meta

PATCH = 8  # px: the class evidence, a square of the class's colour at a random place
COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (40, 60, 230)}


# --------------------------------------------------------------------------- the target layer


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_gets_a_grad_cam_layer(name):
    # On "meta" at the model's own input size: shapes only, so vit_h_14 costs nothing.
    size = get_model_info(name).input_size
    model = build_on_meta(lambda: create_model(ModelConfig(name=name), num_classes=3))
    target = choose_target_layer(model, size)
    assert target.name in dict(model.named_modules())
    assert min(target.grid) >= 2 and target.layout in ("nchw", "tokens")
    if name.startswith("vit_"):  # the last block's attention input: its patches reach the logits
        assert target.layout == "tokens" and target.name.endswith(".ln_1")
        assert target.name.split(".")[-2] == list(model.encoder.layers.named_children())[-1][0]


@pytest.mark.parametrize(("name", "size", "expected"), [
    ("resnet18", 224, "layer4"), ("resnet18", 32, "layer3"),  # layer4 is 1 x 1 at 32 px
    ("resnet20", 32, "layer3"), ("lenet", 32, "pool"), ("swin_t", 224, "permute"),
    ("vit_b_16", 224, "encoder.layers.encoder_layer_11.ln_1"), ("maxvit_t", 224, "blocks.3"),
])
def test_the_layer_is_the_last_map_of_the_image(name, size, expected):
    model = build_on_meta(lambda: create_model(ModelConfig(name=name), num_classes=3))
    assert choose_target_layer(model, size).name == expected


@pytest.mark.parametrize(("name", "size"), [("resnet18", 64), ("vit_b_16", 224),
                                             ("swin_t", 224), ("mobilenet_v3_small", 64)])
def test_grad_cam_runs_on_cnns_and_transformers(name, size):
    torch.manual_seed(0)
    model = create_model(ModelConfig(name=name), num_classes=3).eval()
    for module in model.modules():  # ViT's head starts at zero: no gradient would reach a map
        if isinstance(module, nn.Linear) and not module.weight.any():
            nn.init.normal_(module.weight, std=0.5)
    target = choose_target_layer(model, size)
    images = torch.randn(2, 3, size, size)
    maps = heatmaps(model, images, torch.tensor([0, 2]), target=target)
    assert maps.shape == (2, size, size) and maps.min() >= 0 and maps.max() <= 1
    # scaled per image; all zeros where nothing supports the class (a random network)
    assert torch.isfinite(maps).all() and set(maps.flatten(1).amax(1).tolist()) <= {0.0, 1.0}
    assert maps.max() == 1
    with torch.no_grad():  # the hooks are gone: the model computes as before
        torch.testing.assert_close(model(images), model(images))


def test_channels_last_and_token_layers_are_shown_to_captum_as_maps():
    class Tokens(nn.Module):  # a class token and 4 x 4 patches, as ViT's blocks give
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 6, 4, stride=4)
            self.norm = nn.LayerNorm(6)
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            tokens = self.embed(x).flatten(2).transpose(1, 2)
            tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], 1)
            return self.head(self.norm(tokens)[:, 1:].amax(1))

    model = Tokens().eval()
    target = choose_target_layer(model, 16)
    assert target == TargetLayer("norm", "tokens", (4, 4), 1)
    x = torch.randn(1, 3, 16, 16)
    with hooked_layer(model, target) as view:
        assert isinstance(view, MapView)
        out = model(x)
    torch.testing.assert_close(out, model(x))  # the view changes no value
    assert output_layout((1, 5, 5, 32)) == ("nhwc", (5, 5), 0)
    grid = torch.randn(1, 32, 5, 5)
    nhwc = MapView(TargetLayer("x", "nhwc", (5, 5)))
    torch.testing.assert_close(nhwc(nhwc.restore(None, grid)), grid)


def test_a_named_layer_and_bad_names():
    model = create_model(ModelConfig(name="resnet18"), num_classes=3)
    assert choose_target_layer(model, 64, name="layer2").grid == (8, 8)
    with pytest.raises(ImgclsError, match="no module of that name"):
        choose_target_layer(model, 64, name="layer9")
    with pytest.raises(ImgclsError, match="not a map of the image"):
        choose_target_layer(model, 64, name="fc")


# --------------------------------------------------------------------------- honesty checks


def _patch_images(root: Path, per_class: int, seed: int) -> dict[str, tuple[int, int]]:
    """32 x 32 grey noise with one PATCH x PATCH square of the class's colour at a random
    place; returns each file's patch corner (x, y)."""
    rng = np.random.default_rng(seed)
    corners = {}
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(60, 196, size=(32, 32, 1)).repeat(3, axis=2).astype(np.uint8)
            x, y = (int(v) for v in rng.integers(0, 32 - PATCH + 1, size=2))
            pixels[y:y + PATCH, x:x + PATCH] = colour
            path = root / name / f"{i:03d}.png"
            Image.fromarray(pixels).save(path)
            corners[str(path)] = (x, y)
    return corners


@pytest.fixture(scope="module")
def patch_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("patches")
    _patch_images(root / "train", 80, seed=0)
    probe = _patch_images(root / "probe", 20, seed=1)
    result = api.train(build_config(overrides={
        "data.source": str(root / "train"), "model.name": "resnet20", "train.epochs": 3,
        "loader.batch_size": 32, "optim.lr": 0.05, "sched.warmup_epochs": 0.0,
        "transforms.preset": "none", "transforms.normalize": "half",
        "log.output": str(root / "runs"), "log.name": "patches", "log.progress": "off",
        "log.tensorboard": False, "train.amp": "off",
    }))
    return result.run_dir / "checkpoints" / "last.pt", probe


def _maps_of(loaded, files: list[str], classes: list[int]) -> torch.Tensor:
    from imgcls.deploy.scoring import prepare_image

    transform = loaded.eval_transform(native_size=None)
    images = torch.stack([prepare_image(f, transform) for f in files])
    return heatmaps(loaded.model, images, torch.tensor(classes), target=target_layer_for(loaded))


def test_pointing_game_the_peak_is_on_the_evidence(patch_model):
    checkpoint, probe = patch_model
    loaded = load_model(checkpoint)
    files = sorted(probe)
    truth = [loaded.classes.index(Path(f).parent.name) for f in files]
    maps = _maps_of(loaded, files, truth)
    hits = 0
    for f, heatmap in zip(files, maps, strict=True):
        x, y = peak_of(heatmap)
        px, py = probe[f]
        hits += px <= x < px + PATCH and py <= y < py + PATCH
    # the patch covers 6% of the image: a map that ignored it would hit about 6% of the time
    assert hits / len(files) >= 0.9, f"{hits} of {len(files)} peaks on the patch"


def test_randomising_the_weights_changes_the_maps(patch_model):
    # Adebayo et al. 2018: maps that survive re-initialising the weights show the input's
    # edges, not what the model learned.
    checkpoint, probe = patch_model
    loaded = load_model(checkpoint)
    files = sorted(probe)[:30]
    truth = [loaded.classes.index(Path(f).parent.name) for f in files]
    trained = _maps_of(loaded, files, truth)
    torch.manual_seed(0)
    for module in loaded.model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    random = _maps_of(loaded, files, truth)
    correlations = [spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic
                    for a, b in zip(trained, random, strict=True)]
    assert float(np.nanmean(correlations)) < 0.5, correlations


# --------------------------------------------------------------------------- the command


def test_explain_writes_overlays_and_json_with_predicts_top_k(patch_model, tmp_path, capsys):
    checkpoint, probe = patch_model
    files = sorted(probe)[:4]
    out = tmp_path / "ex"
    code, stdout, err = run_cli(capsys, "explain", str(checkpoint), *files, "--output", str(out),
                                "--top-k", "2", "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc == json.loads((out / "explanations.json").read_text())
    assert doc["method"] == "gradcam" and doc["layer"] == "layer3"
    predicted = predict.predict(checkpoint, files, top_k=2, device="cpu")
    for image, pred in zip(doc["images"], predicted.results, strict=True):
        assert image["path"] == pred.path
        assert [(t["class"], pytest.approx(t["prob"], abs=1e-5)) for t in image["top"]] == [
            (c, p) for c, p in pred.top]
        (explained,) = image["explained"]
        assert explained["class"] == pred.top[0][0]
        picture = Image.open(out / explained["heatmap"])
        assert picture.size == (224, 224) and picture.mode == "RGB"
        assert 0 <= explained["peak"]["x"] < 32 and 0 < explained["peak"]["x_frac"] < 1
        assert json.loads((out / f"{Path(image['path']).stem}.json").read_text()) == image

    code, stdout, err = run_cli(capsys, "explain", str(checkpoint), files[0], "--output",
                                str(out), "--class", "blue", "--method", "integrated_gradients")
    assert code == 0, err
    assert "blue" in stdout and (out / f"{Path(files[0]).stem}.blue.integrated_gradients.png"
                                 ).is_file()


def test_explain_bad_input(patch_model, tmp_path, capsys):
    checkpoint, probe = patch_model
    good = sorted(probe)[0]
    code, _, err = run_cli(capsys, "explain", str(checkpoint), good, "--class", "purple",
                           "--output", str(tmp_path / "a"))
    assert_one_line_error(code, err, "purple", "blue, green, red")
    code, _, err = run_cli(capsys, "explain", str(checkpoint), good, "--layer", "nope",
                           "--output", str(tmp_path / "b"))
    assert_one_line_error(code, err, "nope")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    code, stdout, err = run_cli(capsys, "explain", str(checkpoint), good, str(broken),
                                "--output", str(tmp_path / "c"))
    assert code == 1 and "cannot read" in err and str(broken) in err
    assert "wrote 1 explanations" in stdout


def test_a_multi_label_model_explains_each_label_above_its_threshold(tmp_path, capsys,
                                                                       make_label_csv):
    data = make_label_csv(tmp_path / "d", n=64)
    run = api.train(build_config(overrides={
        "data.source": str(data), "model.name": "lenet", "loader.batch_size": 16,
        "optim.lr": 0.1, "sched.warmup_epochs": 0.0, "data.val_fraction": 0.25,
        "train.epochs": 8, "log.output": str(tmp_path / "runs"), "log.name": "ml",
        "log.progress": "off", "log.tensorboard": False, "train.amp": "off",
        "data.root": str(tmp_path / "cache")})).run_dir
    checkpoint = run / "checkpoints" / "best.pt"
    val = json.loads((run / "split.json").read_text())["val"][:6]
    files = [str(data.parent / key) for key in val]
    predicted = predict.predict(checkpoint, files, device="cpu")
    code, stdout, err = run_cli(capsys, "explain", str(checkpoint), *files, "--json",
                                "--output", str(tmp_path / "ex"))
    assert code == 0, err
    images = json.loads(stdout)["images"]
    assert max(len(image["explained"]) for image in images) >= 2  # several labels, each a map
    for image, pred in zip(images, predicted.results, strict=True):
        labels = [c for c, _ in pred.labels] or [pred.top[0][0]]  # none: the top class
        assert [e["class"] for e in image["explained"]] == labels
        assert all((tmp_path / "ex" / e["heatmap"]).is_file() for e in image["explained"])


@pytest.mark.parametrize(("name", "layout"), [
    ("timm/test_resnet", "nchw"), ("timm/test_convnext", "nchw"), ("timm/test_vit", "tokens"),
    ("timm/test_efficientnet", "nchw"), ("timm/test_maxvit", "nchw")])
def test_timm_models_get_a_layer_and_real_maps(name, layout):
    torch.manual_seed(0)
    model = create_model(ModelConfig(name=name), num_classes=3).eval()
    for module in model.modules():  # a zero-initialised head would send no gradient back
        if isinstance(module, nn.Linear) and not module.weight.any():
            nn.init.normal_(module.weight, std=0.5)
    size = get_model_info(name).input_size
    target = choose_target_layer(model, size)
    assert target.layout == layout and min(target.grid) >= 2
    maps = heatmaps(model, torch.randn(2, 3, size, size), torch.tensor([0, 1]), target=target)
    assert maps.shape == (2, size, size) and maps.max() == 1
