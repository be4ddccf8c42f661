"""``imgcls predict`` on a tiny trained checkpoint: folders, list files, bad files, outputs."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import _make_image_folder, _make_list_file
from torch import nn

from imgcls import api
from imgcls.cli import main
from imgcls.config import build_config
from imgcls.deploy import predict
from imgcls.engine.evaluation import batch_logits, evaluate, tta_logits
from imgcls.errors import ImgclsError

CLASSES = ("ants", "bees", "wasps")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A LeNet trained for a few epochs on colour-coded classes: it gets most images right."""
    root = tmp_path_factory.mktemp("train")
    data = _make_image_folder(root / "imgs", classes=CLASSES, per_class=24, size=32)
    result = api.train(build_config(overrides={
        "data.source": str(data), "model.name": "lenet", "train.epochs": 4,
        "loader.batch_size": 16, "optim.lr": 0.05, "sched.warmup_epochs": 0.0,
        "log.output": str(root / "runs"), "log.name": "run", "log.progress": "off",
        "log.tensorboard": False,
    }))
    return result.run_dir / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Unseen images of the same classes, every format and colour mode, sizes 20..48 px."""
    return _make_image_folder(tmp_path_factory.mktemp("predict") / "imgs", classes=CLASSES,
                              per_class=10, seed=1)


def _with_bad_files(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "ants" / "broken.jpg").write_bytes(b"this is not a jpeg")
    png = next((dst / "bees").glob("*.png")).read_bytes()
    (dst / "bees" / "truncated.png").write_bytes(png[: len(png) // 3])
    return dst


def _probs(report: predict.PredictReport) -> dict[str, dict[str, float]]:
    return {r.path: dict(r.top) for r in report.results if r.error is None}


def _check_top(result: predict.PredictResult, k: int) -> None:
    assert result.error is None, result
    probs = [p for _, p in result.top]
    assert len(probs) == k
    assert probs == sorted(probs, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probs)


# ---------------------------------------------------------------- the Python API


def test_folder_of_mixed_images(ckpt, images, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(images, folder)
    # Hidden files, hidden folders and non-images are not inputs.
    (folder / "ants" / "._ants_000.jpg").write_bytes(b"resource fork")
    (folder / ".cache").mkdir()
    shutil.copy(folder / "ants" / "ants_000.jpg", folder / ".cache" / "x.jpg")
    (folder / "notes.md").write_text("not an image")

    report = predict.predict(ckpt, [folder], top_k=5, device="cpu")
    assert report.classes == list(CLASSES)
    assert report.failed == 0
    expected = sorted(str(p) for p in folder.rglob("*") if p.is_file()
                      and not p.name.startswith(".") and ".cache" not in p.parts
                      and p.suffix != ".md")
    assert [r.path for r in report.results] == expected
    assert any(p.endswith(".JPEG") for p in expected)  # upper-case extensions count
    correct = 0
    for result in report.results:
        _check_top(result, k=len(CLASSES))  # top_k=5 is capped at the 3 classes
        assert {name for name, _ in result.top} == set(CLASSES)
        assert sum(p for _, p in result.top) == pytest.approx(1.0, abs=1e-5)
        correct += result.top[0][0] == Path(result.path).parent.name
    assert correct / len(report.results) >= 0.8


def test_batch_size_does_not_change_probabilities(ckpt, images, tmp_path):
    # Bad files in between shift every later image's row in the batch: results must not move.
    folder = _with_bad_files(images, tmp_path / "imgs")
    one = predict.predict(ckpt, [folder], top_k=2, batch_size=1, device="cpu")
    many = predict.predict(ckpt, [folder], top_k=2, batch_size=64, device="cpu")
    seven = predict.predict(ckpt, [folder], top_k=2, batch_size=7, device="cpu")
    assert [r.path for r in one.results] == [r.path for r in many.results]
    assert one.failed == many.failed == 2
    for other in (many, seven):
        a, b = _probs(one), _probs(other)
        assert a.keys() == b.keys()
        for path in a:
            assert a[path].keys() == b[path].keys()
            for name in a[path]:
                assert a[path][name] == pytest.approx(b[path][name], abs=1e-5), path


def test_tta_averages_to_a_distribution(ckpt, images):
    plain = predict.predict(ckpt, [images], top_k=3, device="cpu")
    flip = predict.predict(ckpt, [images], top_k=3, device="cpu", tta=True)
    agree = 0
    for a, b in zip(plain.results, flip.results, strict=True):
        _check_top(b, k=3)
        assert sum(p for _, p in b.top) == pytest.approx(1.0, abs=1e-5)
        agree += a.top[0][0] == b.top[0][0]
    assert agree / len(plain.results) >= 0.8
    assert _probs(plain) != _probs(flip)  # the flip really was averaged in


class _FlipSensitive(nn.Module):
    """Logits A for an image brighter on its left, B for its mirror image: chosen so that the
    mean of the logits (class 0) and the mean of the probabilities (class 1) disagree."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        left = x[..., :half].mean(dim=(1, 2, 3)) > x[..., half:].mean(dim=(1, 2, 3))
        a, b = torch.tensor([4.0, 0.0, 3.9]), torch.tensor([0.0, 3.0, -6.0])
        return torch.where(left[:, None], a, b)


def test_one_flip_tta_for_evaluate_and_predict():
    model, cpu = _FlipSensitive(), torch.device("cpu")
    images = torch.zeros(2, 3, 8, 8)
    images[..., :4] = 1.0
    result = evaluate(model, [(images, torch.tensor([0, 1]))], nn.CrossEntropyLoss(), cpu, 3,
                      tta="flip")
    assert result.confusion[:, 0].sum() == 2  # evaluate: class 0 for both images
    # predict's scoring of a batch (imgcls.deploy.scoring.score): the one TTA, then its top-k
    tops = [r.top for r in predict._classify(
        batch_logits(model, images, cpu, tta=predict._tta_mode(True)), CLASSES, k=3)]
    assert [top[0][0] for top in tops] == [CLASSES[0]] * 2
    expected = tta_logits(model, images, "flip")[0].softmax(dim=0)
    assert [p for _, p in tops[0]] == pytest.approx(sorted(expected.tolist(), reverse=True))


class _Corner(nn.Module):
    """Logits: the first three pixels of the top row, channel 0, times (1, 10, 100)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :3] * torch.tensor([1.0, 10.0, 100.0])


def test_flip_translate_tta_is_airbenchs_weighted_average():
    # airbench94's tta_level=2 by hand: 1/4 each for the image and its mirror, 1/8 each for the
    # image shifted down-right and up-left by one pixel (reflect padding) and their mirrors.
    model, cpu = _Corner(), torch.device("cpu")
    images = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)

    def shifted(x: torch.Tensor, rows: list[int], cols: list[int]) -> torch.Tensor:
        return x[:, :, rows][:, :, :, cols]

    down_right = shifted(images, [1, 0, 1, 2, 3], [1, 0, 1, 2, 3, 4])  # row/col -1 mirror 1
    up_left = shifted(images, [1, 2, 3, 4, 3], [1, 2, 3, 4, 5, 4])  # row 5 mirrors 3, col 6: 4
    variants = [(images, 1 / 4), (down_right, 1 / 8), (up_left, 1 / 8)]
    expected = sum(w * (model(x) + model(x.flip(-1))) for x, w in variants)
    got = tta_logits(model, images, "flip_translate")
    assert got.shape == (2, 3)
    assert torch.allclose(got, expected)
    assert not torch.allclose(got, tta_logits(model, images, "flip"))
    labels = expected.argmax(1)
    result = evaluate(model, [(images, labels)], nn.CrossEntropyLoss(), cpu, 3,
                      tta="flip_translate")
    assert result.top1 == 1.0 and result.n == 2
    assert build_config(overrides={"train.tta": "flip_translate"}).train.tta == "flip_translate"
    with pytest.raises(ValueError, match="tta"):
        tta_logits(model, images, "translate")


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_predict_and_evaluate_score_alike(ckpt, tmp_path, tta):
    """One test-time augmentation: evaluate's top-1 is exactly the share of images whose top
    prediction from `predict` is their true class, with and without the flip."""
    data = _make_image_folder(tmp_path / "data", classes=CLASSES, per_class=12, size=32,
                              layout="train_val", seed=3)
    summary = api.evaluate_checkpoint(ckpt, data=str(data), split="val", device="cpu", tta=tta,
                                      output=tmp_path / "eval")
    report = predict.predict(ckpt, [data / "val"], top_k=1, device="cpu", tta=tta == "flip")
    right = [Path(r.path).parent.name == r.top[0][0] for r in report.results]
    assert summary["n"] == len(right) == 3 * 12
    assert summary["top1"] == pytest.approx(sum(right) / len(right), abs=1e-12)


def test_list_file_and_single_files(ckpt, images, tmp_path):
    list_file = _make_list_file(tmp_path / "listed", classes=CLASSES, per_class=3, seed=2)
    # Labels are optional; paths may contain spaces (the first image of each class has one).
    lines = list_file.read_text().splitlines()
    lines[-1] = lines[-1].rsplit(" ", 1)[0]
    list_file.write_text("\n".join(lines) + "\n")
    listed = next((tmp_path / "listed" / "images" / "bees").glob("*.png"))
    single = next(images.rglob("*.webp"))

    # A file named twice (here in the list file and on its own) is classified once.
    report = predict.predict(ckpt, [list_file, listed, single], top_k=1, device="cpu")
    assert report.failed == 0
    paths = [Path(r.path) for r in report.results]
    assert len(paths) == 3 * 3 + 1
    assert all(p.is_file() for p in paths)
    assert any(" " in p.name for p in paths)
    assert paths[-1] == single
    for result in report.results:
        _check_top(result, k=1)


def test_missing_input_or_no_images_is_an_error(ckpt, tmp_path):
    with pytest.raises(ImgclsError, match="input not found: .*nope"):
        predict.predict(ckpt, [tmp_path / "nope"], device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImgclsError, match="no images found"):
        predict.predict(ckpt, [tmp_path / "empty"], device="cpu")


def test_table_is_aligned(ckpt, images, tmp_path):
    folder = _with_bad_files(images, tmp_path / "imgs")
    report = predict.predict(ckpt, [folder], top_k=2, device="cpu")
    lines = predict.to_table(report).splitlines()
    assert lines[0].split() == ["path", "top-1", "prob", "top-2", "prob"]
    assert len(lines) == 1 + len(report.results)
    column = lines[0].index("top-1")
    for line, result in zip(lines[1:], report.results, strict=True):
        assert line.startswith(result.path)
        if result.error is None:
            assert line[column:].split()[0] == result.top[0][0]
        else:
            assert line[column:].startswith("error: ")


def test_csv_cannot_be_written(ckpt, images, tmp_path):
    report = predict.predict(ckpt, [next(images.rglob("*.png"))], device="cpu")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ImgclsError, match="cannot write"):
        predict.write_csv(report, tmp_path / "taken")
    assert list(tmp_path.iterdir()) == [tmp_path / "taken"]  # no temporary file left behind


# ---------------------------------------------------------------- the command line


def test_cli_json_and_csv(ckpt, images, tmp_path, capsys):
    out_csv = tmp_path / "out" / "preds.csv"
    code = main(["predict", str(ckpt), str(images), "--top-k", "2", "--json", "--device", "cpu",
                 "--csv", str(out_csv)])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["checkpoint"] == str(ckpt)
    assert doc["classes"] == list(CLASSES)
    assert doc["errors"] == []
    assert len(doc["predictions"]) == 3 * 10
    for item in doc["predictions"]:
        assert [set(t) for t in item["top"]] == [{"class", "prob"}] * 2
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert list(rows[0]) == ["path", "rank", "class", "prob", "error"]
    assert len(rows) == 2 * 3 * 10
    first = doc["predictions"][0]
    assert [(r["class"], float(r["prob"])) for r in rows[:2]] == [
        (t["class"], t["prob"]) for t in first["top"]
    ]
    assert {r["rank"] for r in rows} == {"1", "2"}
    assert all(r["error"] == "" for r in rows)


def test_cli_bad_files_exit_1_and_the_rest_are_classified(ckpt, images, tmp_path, capsys):
    folder = _with_bad_files(images, tmp_path / "imgs")
    out_csv = tmp_path / "preds.csv"
    code = main(["predict", str(ckpt), str(folder), "--json", "--device", "cpu",
                 "--csv", str(out_csv)])
    out, err = capsys.readouterr()
    assert code == 1
    doc = json.loads(out)
    assert len(doc["predictions"]) == 3 * 10
    bad = {str(folder / "ants" / "broken.jpg"), str(folder / "bees" / "truncated.png")}
    assert {e["path"] for e in doc["errors"]} == bad
    for entry in doc["errors"]:
        assert entry["error"] and "\n" not in entry["error"]
        assert entry["path"] not in entry["error"]  # the reason only; the path is beside it
    err_lines = err.strip().splitlines()
    assert len(err_lines) == 2 and all(ln.startswith("imgcls: cannot read ") for ln in err_lines)
    assert "Traceback" not in err
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    failed = [r for r in rows if r["error"]]
    assert {r["path"] for r in failed} == bad
    assert all(r["rank"] == r["class"] == r["prob"] == "" for r in failed)


def test_cli_table(ckpt, images, capsys):
    code = main(["predict", str(ckpt), str(images / "ants"), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[0].split()[:3] == ["path", "top-1", "prob"]
    assert len(out.splitlines()) == 1 + 10


def test_cli_missing_input_exit_2_one_line(ckpt, tmp_path, capsys):
    code = main(["predict", str(ckpt), str(tmp_path / "nope.jpg")])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgcls: error: input not found")
    assert "nope.jpg" in lines[0]


# ---------------------------------------------------------------- "I don't know"


def test_min_confidence_answers_unknown_below_it(ckpt, images, tmp_path, capsys):
    plain = predict.predict(ckpt, [images], top_k=2, device="cpu")
    top1 = sorted(r.top[0][1] for r in plain.results)
    cut = top1[len(top1) // 2]  # about half the images fall below it
    out_csv = tmp_path / "preds.csv"
    code = main(["predict", str(ckpt), str(images), "--top-k", "2", "--json", "--device", "cpu",
                 "--min-confidence", repr(cut), "--csv", str(out_csv)])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["min_confidence"] == cut
    expected = {r.path: (r.top[0][0] if r.top[0][1] >= cut else "unknown")
                for r in plain.results}
    answers = {p["path"]: p["answer"] for p in doc["predictions"]}
    assert answers == expected
    assert 0 < sum(a == "unknown" for a in answers.values()) < len(answers)
    # the probabilities themselves are unchanged
    assert [p["top"] for p in doc["predictions"]] == [
        [{"class": c, "prob": q} for c, q in r.top] for r in plain.results]
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert list(rows[0])[-1] == "answer"
    assert {(r["path"], r["answer"]) for r in rows} == set(expected.items())
    main(["predict", str(ckpt), str(images), "--device", "cpu", "--min-confidence", repr(cut)])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["path", "answer"]
    shown = {line.split()[0]: line.split()[1] for line in table[1:]}
    assert shown == expected


def test_min_confidence_zero_and_one(ckpt, images):
    always = predict.predict(ckpt, [images / "ants"], device="cpu", min_confidence=0.0)
    assert [r.answer for r in always.results] == [r.top[0][0] for r in always.results]
    never = predict.predict(ckpt, [images / "ants"], device="cpu", min_confidence=1.0)
    assert {r.answer for r in never.results} == {"unknown"}
    assert predict.predict(ckpt, [images / "ants"], device="cpu").results[0].answer is None


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_min_confidence_out_of_range_is_one_line(ckpt, images, capsys, value):
    code = main(["predict", str(ckpt), str(images), "--min-confidence", value])
    err = capsys.readouterr().err
    assert code == 2 and "--min-confidence" in err and len(err.strip().splitlines()) == 1
