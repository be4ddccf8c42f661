"""timm's models as ``model.name=timm/NAME`` (or ``timm:NAME``): sizes and normalisation from the
pretrained config, head, freeze, drop_path, pretrained weights (cached, a local file, offline),
the listing, and every command on a checkpoint (train, resume, evaluate, predict, export).

timm's tiny test models (``test_resnet``, ``test_vit``...; 0.1-1M parameters, 160 px) stand in for
real ones. Nothing here reaches the network: the Hub is made unreachable or offline.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import _make_image_folder, assert_one_line_error, run_cli

from imgcls import api
from imgcls.config import ModelConfig, build_config
from imgcls.data.pipeline import resolve_preprocessing
from imgcls.data.sources import DataSplit
from imgcls.errors import ImgclsError
from imgcls.models import backbone_stages, create_model, find_head, get_model_info, model_names
from imgcls.models import timm_models as timm_zoo
from imgcls.runs.record import CheckpointRecord

timm = pytest.importorskip("timm")
hub_constants = pytest.importorskip("huggingface_hub.constants")

HALF = ([0.5] * 3, [0.5] * 3)
HUB_REPO = "timm/test_resnet.r160_in1k"


def _x(size: int = 160, channels: int = 3) -> torch.Tensor:
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- names and info


@pytest.mark.slow  # a fresh interpreter: torch's import alone takes seconds
def test_imgcls_neither_needs_nor_imports_timm():
    code = ("import sys, imgcls.models, imgcls.cli.main; "
            "from imgcls.models import create_model, model_names; model_names(); "
            "assert 'timm' not in sys.modules, 'timm imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_without_timm_a_timm_name_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(ImgclsError, match=r'pip install "imgcls\[timm\]"') as err:
        timm_zoo.names()
    assert "\n" not in str(err.value)


def test_info_comes_from_the_pretrained_config():
    vit = get_model_info("timm/test_vit")
    assert (vit.source, vit.input_size, vit.fixed_size) == ("timm", 160, True)
    assert vit.mean_std == ((0.5,) * 3, (0.5,) * 3)  # a ViT's, not ImageNet's
    assert vit.resize_size == int(160 / 0.95)  # crop_pct 0.95
    net = get_model_info("timm:test_efficientnet")  # the colon form is the same model
    assert net.mean_std == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) and not net.fixed_size
    assert get_model_info("timm/test_resnet.r160_in1k").input_size == 160  # a tag is a name too
    assert get_model_info("resnet18").mean_std is None  # torchvision's: unchanged


def test_normalize_auto_takes_the_models_mean_and_std():
    data = DataSplit(train=[], val=None, classes=["a", "b"], split_record={})

    def mean_std(name: str, normalize: str = "auto") -> object:
        cfg = build_config(overrides={"model.name": name, "transforms.normalize": normalize})
        return resolve_preprocessing(cfg, data, cache=False).mean_std

    assert mean_std("timm/test_vit") == HALF
    assert mean_std("timm/test_vit", "imagenet")[0] == [0.485, 0.456, 0.406]  # asked for
    assert mean_std("timm/test_efficientnet")[0] == [0.485, 0.456, 0.406]
    assert mean_std("resnet18")[0] == [0.485, 0.456, 0.406]


def test_unknown_name_or_tag_is_one_line(capsys):
    code, _, err = run_cli(capsys, "models", "timm/test_resnett")
    assert_one_line_error(code, err, "unknown timm model", "did you mean timm/test_resnet")
    code, _, err = run_cli(capsys, "models", "timm/test_resnet.nope")
    assert_one_line_error(code, err, "no pretrained tag nope", "r160_in1k")


def test_timm_names_are_listed_from_timms_registry():
    names = model_names("timm")
    assert "timm/test_vit" in names and "timm/resnet50" in names and len(names) > 1000
    assert "resnet18" in model_names() and not any(n.startswith("timm/") for n in model_names())


# --------------------------------------------------------------------------- building


@pytest.mark.parametrize("name", ["test_resnet", "test_vit", "test_convnext",
                                  "test_efficientnet", "test_byobnet"])
def test_the_head_found_is_timms_classifier_and_stages_cut(name):
    model = create_model(ModelConfig(name=f"timm/{name}"), 3)
    head_name, head = find_head(model)
    assert head_name == model.pretrained_cfg["classifier"] and head.out_features == 3
    stages = backbone_stages(model)
    assert len(stages) >= 4  # the trunk (blocks, stages, layerN) is cut, not one lump
    assert model(_x()).shape == (2, 3)


def test_freeze_head_append_drop_path_pool_channels():
    model = create_model(ModelConfig(name="timm/test_resnet", freeze="backbone"), 4)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}
    model = create_model(ModelConfig(name="timm/test_resnet", freeze=["layer1.*"]), 4)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("layer1"))

    appended = create_model(ModelConfig(name="timm/test_vit", head="append"), 4)
    assert find_head(appended)[0] == "head.add_linear" and appended(_x()).shape == (2, 4)

    dropped = create_model(ModelConfig(name="timm/test_vit", drop_path=0.2), 4)
    assert max(m.drop_prob for m in dropped.modules() if type(m).__name__ == "DropPath") == \
        pytest.approx(0.2)
    pooled = create_model(ModelConfig(name="timm/test_resnet", head_pool="max"), 4)
    assert pooled.global_pool.pool_type == "max"

    gray = create_model(ModelConfig(name="timm:test_convnext", in_channels=1), 4)
    assert gray(_x(64, channels=1)).shape == (2, 4)


def test_an_option_the_model_does_not_take_is_one_line():
    with pytest.raises(ImgclsError, match="model.head_pool: timm cannot build timm/test_vit_relpos "
                                          r"with it \(AssertionError: Only avg") as err:
        create_model(ModelConfig(name="timm/test_vit_relpos", head_pool="max"), 3)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- pretrained


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """An empty Hugging Face cache, and no host reachable (as here, and offline anywhere)."""
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for var in ("HF_HUB_OFFLINE", *timm_zoo._PROXY_VARS):
        monkeypatch.delenv(var, raising=False)

    def unreachable(address, *args, **kwargs):
        raise OSError(f"[Errno -2] Name or service not known: {address[0]}")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    return tmp_path / "hub"


def _hub_url() -> str:
    return f"https://huggingface.co/{HUB_REPO}/resolve/main/model.safetensors"


@pytest.mark.parametrize("offline_env", [False, True])
def test_offline_pretrained_is_one_line_naming_the_file(no_network, monkeypatch, offline_env):
    if offline_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ImgclsError) as err:
        create_model(ModelConfig(name="timm/test_resnet", pretrained="default"), 3)
    message = str(err.value)
    assert "\n" not in message and _hub_url() in message and "model.pretrained=PATH" in message
    assert ("HF_HUB_OFFLINE" if offline_env else "Name or service not known") in message


@pytest.mark.slow  # a fresh interpreter: torch's import alone takes seconds
def test_offline_cli_fails_at_once_in_one_line(tmp_path):
    """The real command, in its own process with no network: no minute of hub retries."""
    data = _make_image_folder(tmp_path / "imgs", per_class=2, size=16)
    env = {"PATH": "", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "imgcls", "train", "--data", str(data), "--model",
         "timm:test_vit", "model.pretrained=r160_in1k", "--dry-run"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("imgcls: error: model.pretrained: cannot download timm:test_vit")
    assert "test_vit.r160_in1k/resolve/main/model.safetensors" in lines[0]


def _published(path: Path) -> dict[str, torch.Tensor]:
    """A 1000-class test_resnet's weights written as the Hub holds them (safetensors)."""
    from safetensors.torch import save_file

    state = timm.create_model("test_resnet").state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, path)
    return state


def test_the_fetched_file_loads_with_model_pretrained_path(tmp_path):
    state = _published(tmp_path / "model.safetensors")
    model = create_model(ModelConfig(name="timm/test_resnet",
                                     pretrained=str(tmp_path / "model.safetensors")), 3)
    report = model.pretrained_report
    assert report.complete and set(report.head) == {"fc.weight", "fc.bias"}
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


def test_weights_in_the_hub_cache_load_offline(no_network, monkeypatch):
    snapshot = no_network / f"models--{HUB_REPO.replace('/', '--')}" / "snapshots" / "abc"
    state = _published(snapshot / "model.safetensors")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    model = create_model(ModelConfig(name="timm/test_resnet", pretrained="default"), 3)
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert model.fc.out_features == 3


def test_default_without_weights_and_unknown_tag_are_one_line():
    with pytest.raises(ImgclsError, match="timm has no pretrained weights for timm/test_maxvit"):
        create_model(ModelConfig(name="timm/test_maxvit", pretrained="default"), 3)
    with pytest.raises(ImgclsError, match=r"not a weights name of timm/test_resnet \(default, "
                                          r"r160_in1k\)"):
        create_model(ModelConfig(name="timm/test_resnet", pretrained="nope.pth"), 3)


# --------------------------------------------------------------------------- the CLI


def test_models_summarises_a_timm_model(capsys):
    code, out, err = run_cli(capsys, "models", "timm/test_resnet", "--depth", "1",
                             "--num-classes", "5")
    assert code == 0, err
    assert out.startswith("timm/test_resnet: 5 classes, 3x160x160 input")
    assert "fc (Linear)" in out and "output shape:       [1, 5]" in out


def test_models_lists_timm_names_with_a_filter(capsys):
    code, out, err = run_cli(capsys, "models", "--source", "timm", "--filter", "test_vit*")
    assert code == 0, err
    rows = out.splitlines()[1:]
    assert [r.split()[0] for r in rows] == [f"timm/test_vit{s}" for s in ("", "2", "3", "4",
                                                                           "_relpos")]
    assert all(r.split()[1:3] == ["timm", "160"] for r in rows)
    code, _, err = run_cli(capsys, "models", "--source", "timm", "--filter", "zzz*")
    assert_one_line_error(code, err, "no timm model matches --filter 'zzz*'")


FAST = {"loader.batch_size": 8, "optim.lr": 0.02, "sched.warmup_epochs": 0.0,
        "log.progress": "off", "log.tensorboard": False}


@pytest.mark.slow
def test_every_command_on_a_timm_checkpoint(tmp_path, capsys):
    """train (with freeze and drop_path), resume, evaluate, predict, export to ONNX (verified
    here with ONNX Runtime too); the checkpoints stay weights-only."""
    ort = pytest.importorskip("onnxruntime")
    data = _make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=5)
    cfg = build_config(overrides={
        **FAST, "data.source": str(data), "model.name": "timm/test_resnet",
        "transforms.image_size": 32, "model.drop_path": 0.1, "model.freeze": "1",
        "train.epochs": 1, "log.output": str(tmp_path / "runs"), "log.name": "r"})
    run = api.train(cfg).run_dir
    resumed = api.train(resume=run, overrides={"train.epochs": 2})
    assert resumed.epochs == 2
    last = run / "checkpoints" / "last.pt"
    record = CheckpointRecord.load(last)  # torch.load(weights_only=True), checked
    assert record.config["model"]["name"] == "timm/test_resnet" and record.epoch == 2
    assert record.mean_std == HALF  # the model's own statistics (normalize=auto)

    code, out, err = run_cli(capsys, "evaluate", str(last))
    assert code == 0 and "acc" in out, err
    code, out, err = run_cli(capsys, "predict", str(last), str(data / "a"))
    assert code == 0 and len(out.strip().splitlines()) == 1 + 5, err  # a header, 5 images
    code, out, err = run_cli(capsys, "export", str(last), "--format", "onnx")
    assert code == 0 and "verified ok" in out, err
    assert "(x - [0.5, 0.5, 0.5]) / [0.5, 0.5, 0.5]" in out  # the model's own statistics

    from imgcls.deploy.load import load_model

    session = ort.InferenceSession(str(last.with_suffix(".onnx")),
                                   providers=["CPUExecutionProvider"])
    x = _x(32)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        want = load_model(last).model(x)
    assert (torch.from_numpy(got) - want).abs().max().item() < 1e-4


@pytest.mark.slow
def test_a_vit_named_with_a_colon_trains_and_exports(tmp_path, capsys):
    """timm:NAME is no user code (no --trust-code to rebuild it); a ViT keeps its 160 px."""
    data = _make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=4)
    code, out, err = run_cli(
        capsys, "train", "--data", str(data), "--model", "timm:test_vit", "--epochs", "1",
        "--output", str(tmp_path / "runs"), "--name", "v", "loader.batch_size=8",
        "log.progress=off", "log.tensorboard=false")
    assert code == 0, err
    best = tmp_path / "runs" / "v" / "checkpoints" / "best.pt"
    code, out, err = run_cli(capsys, "export", str(best), "--format", "onnx")
    assert code == 0 and "verified ok" in out and "[N, 3, 160, 160]" in out, err
