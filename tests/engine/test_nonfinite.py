"""Divergence is not success: a non-finite loss stops the run before its weights are saved,
train.skip_nonfinite skips bad batches instead, infinite config values are refused, and
evaluate/predict refuse a checkpoint with non-finite weights."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import BlowUpAfter, assert_one_line_error, run_cli

from imgcls import api
from imgcls.config import build_config
from imgcls.engine.loop import NonFiniteLoss
from imgcls.errors import ImgclsError
from imgcls.runs.checkpoint import load_checkpoint, save_checkpoint

FAST = {"model.name": "lenet", "loader.batch_size": 8, "optim.lr": 0.02,
        "sched.warmup_epochs": 0.0, "sched.name": "none", "log.progress": "off"}


def _cfg(tmp_path: Path, data: Path | str, **extra: object):
    return build_config(overrides={**FAST, "data.source": str(data),
                                   "log.output": str(tmp_path / "runs"), **extra})


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=12, size=32)
    with pytest.raises(NonFiniteLoss, match=r"non-finite .* in epoch 2, first at batch \d+ of"):
        api.train(_cfg(tmp_path, data, **{"train.epochs": 3, "log.name": "div"}),
                  callbacks=[BlowUpAfter(1)])
    run = tmp_path / "runs" / "div"
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(run / "checkpoints" / name)
        assert ckpt["epoch"] == 1
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values()
                   if v.is_floating_point())
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1]


def test_huge_lr_from_the_command_line_exits_non_zero(tmp_path, make_image_folder, capsys):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=12, size=32)
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--model", "lenet",
                           "--lr", "1e30", "--epochs", "2", "--output", str(tmp_path / "runs"),
                           "sched.warmup_epochs=0", "log.progress=off")
    last = err.strip().splitlines()[-1]  # after the epochs it did train: one error line
    assert code == 2 and last.startswith("imgcls: error: ") and "Traceback" not in err
    for needle in ("non-finite", "lower optim.lr", "train.skip_nonfinite"):
        assert needle in last
    assert "done:" not in err


NAN_ON_WHITE = textwrap.dedent("""
    import torch
    from torch import nn


    class NanOnWhite(nn.Module):
        input_size = 8

        def __init__(self, num_classes):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))

        def forward(self, x):
            out = self.net(x)
            white = x.flatten(1).amin(dim=1) >= 0.999  # an all-white image
            return torch.where(white[:, None], torch.full_like(out, float("nan")), out)
""")


class _Images(torch.utils.data.Dataset):
    """Dark and light 8x8 images; image 5 is pure white."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int):
        value = 255 if i == 5 else (200 if i % 2 else 30)
        return torch.full((3, 8, 8), value, dtype=torch.uint8), i % 2


def test_skip_nonfinite_skips_bad_batches(tmp_path):
    model_file = tmp_path / "nan_model.py"
    model_file.write_text(NAN_ON_WHITE)
    cfg = _cfg(tmp_path, "unused", **{"model.name": f"{model_file}:NanOnWhite",
                                      "transforms.normalize": "none", "transforms.preset": "none",
                                      "train.epochs": 2, "data.val_fraction": 0.0,
                                      "loader.batch_size": 4, "log.name": "skip"})
    with pytest.raises(NonFiniteLoss):
        api.train(cfg, train_dataset=_Images(), classes=["dark", "light"])
    skipping = build_config(cfg, {"train.skip_nonfinite": 5, "log.name": "skip2"})
    result = api.train(skipping, train_dataset=_Images(), classes=["dark", "light"])
    ckpt = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert result.epochs == 2
    fewer = build_config(cfg, {"train.skip_nonfinite": 1, "log.name": "skip3"})
    with pytest.raises(NonFiniteLoss, match="more than train.skip_nonfinite=1"):
        api.train(fewer, train_dataset=_Images(), classes=["dark", "light"])


@pytest.mark.parametrize("key,value", [("optim.lr", ".inf"), ("optim.weight_decay", ".inf"),
                                       ("optim.lr", ".nan"), ("train.max_minutes", "-.inf")])
def test_infinite_config_values_are_refused(tmp_path, capsys, key, value):
    code, _, err = run_cli(capsys, "train", "--data", "digits", f"{key}={value}",
                           "--output", str(tmp_path / "runs"))
    assert_one_line_error(code, err, key, "finite")
    assert not (tmp_path / "runs").exists()


def test_non_finite_checkpoint_is_refused_by_evaluate_and_predict(tmp_path, make_image_folder,
                                                                  capsys):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=6, size=32)
    run = api.train(_cfg(tmp_path, data, **{"train.epochs": 1, "log.name": "ok"})).run_dir
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    ckpt["model"]["fc1.weight"][0, 0] = float("nan")
    bad = tmp_path / "bad.pt"
    save_checkpoint({k: v for k, v in ckpt.items() if k not in ("format", "version")}, bad)
    capsys.readouterr()
    for argv in (["evaluate", str(bad)], ["predict", str(bad), str(data)]):
        code, _, err = run_cli(capsys, *argv)
        assert_one_line_error(code, err, "non-finite weights", "fc1.weight")
    with pytest.raises(ImgclsError, match="non-finite"):
        from imgcls.deploy.load import load_model
        load_model(bad)
