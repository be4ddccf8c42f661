"""imgcls tune: the search-space file and its errors, two worker processes sharing one SQLite
study with pruned trials, the rerun that continues a study up to --trials in all, failed and
interrupted trials, and the best trial's recipe trained again."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import _make_image_folder, assert_one_line_error, run_cli, tune_base

from imgcls.config import build_config, load_yaml
from imgcls.engine.trainer import Callback, Trainer
from imgcls.errors import ImgclsError
from imgcls.experiments.search_space import load_space

optuna = pytest.importorskip("optuna")

GOOD_LR, BAD_LR = 0.1, 1e-6  # measured: val_acc 1.0 / 0.33 (chance) after one epoch
TRIALS = 4
THRESHOLD = 0.5  # --pruner threshold: below it after epoch 1, a trial is stopped


def _options(data: Path, out: Path) -> list[str]:
    """Train options of a tiny, fast study: 3 colour classes, 36 training images, lenet."""
    return ["--data", str(data), "--model", "lenet", "--epochs", "2", "--batch-size", "8",
            "--output", str(out), "log.progress=off", "log.tensorboard=false",
            "sched.warmup_epochs=0", "data.val_fraction=0.25", f"data.root={out.parent / 'cache'}"]


def _tune_args(space: Path, data: Path, out: Path, trials: int = TRIALS) -> list[str]:
    return ["tune", "--space", str(space), "--trials", str(trials), "--pruner", "threshold",
            "--prune-threshold", str(THRESHOLD), "--prune-after", "1", *_options(data, out)]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _trials(exp: Path) -> list:
    study = optuna.load_study(study_name=exp.name, storage=f"sqlite:///{exp / 'study.db'}")
    return [t for t in study.get_trials() if t.user_attrs.get("imgcls_uncounted") != "surplus"]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """Two `imgcls tune` processes on one SQLite study: 3 enqueued trials (good, bad, good lr)
    so that the threshold pruner's verdicts are known, then one drawn by the sampler."""
    root = tmp_path_factory.mktemp("tune")
    data = _make_image_folder(root / "imgs", classes=("a", "b", "c"), per_class=16, size=16)
    space = _write(root / "space.yaml", "optim.lr: {log_uniform: [1e-6, 0.2]}\n")
    out = root / "runs"
    exp = out / "tune-space"
    exp.mkdir(parents=True)
    made = optuna.create_study(study_name=exp.name, storage=f"sqlite:///{exp / 'study.db'}",
                               direction="maximize")
    for lr in (GOOD_LR, BAD_LR, 0.05):
        made.enqueue_trial({"optim.lr": lr})
    command = [sys.executable, "-m", "imgcls", *_tune_args(space, data, out)]
    workers = [subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    return {"root": root, "data": data, "space": space, "out": out, "exp": exp,
            "codes": [w.returncode for w in workers], "outputs": outputs}


# --------------------------------------------------------------------------- the study


@pytest.mark.slow  # two worker processes: about 30 s on 2 idle cores
def test_two_workers_share_one_study_with_pruned_trials(study):
    for code, (stdout, stderr) in zip(study["codes"], study["outputs"], strict=True):
        assert code == 0, stderr[-3000:]
        assert "Traceback" not in stderr and "locked" not in stderr
        assert stdout.split()[:4] == ["trial", "state", "val_acc", "epochs"]  # the table
    trials = _trials(study["exp"])
    assert sorted(t.number for t in trials) == list(range(TRIALS))  # exactly --trials in all
    # every trial ran once, in one worker: the workers' "trial N: ..." lines split them
    started = [line.split(":")[0] for _, err in study["outputs"] for line in err.splitlines()
               if line.startswith("trial ") and " -> " in line]
    assert sorted(started) == [f"trial {n}" for n in range(TRIALS)]
    by_number = {t.number: t for t in trials}
    good, bad = by_number[0], by_number[1]
    assert good.params["optim.lr"] == GOOD_LR and good.state.name == "COMPLETE"
    assert sorted(good.intermediate_values) == [1, 2] and good.value == 1.0
    assert bad.params["optim.lr"] == BAD_LR and bad.state.name == "PRUNED"
    assert list(bad.intermediate_values) == [1] and bad.value < THRESHOLD
    for t in trials:  # each trial is an ordinary run folder with the values it was given
        run = study["exp"] / f"trial-{t.number:04d}"
        assert t.user_attrs["run_dir"] == str(run.resolve())
        cfg = build_config(load_yaml(run / "config.yaml"))
        assert cfg.optim.lr == pytest.approx(t.params["optim.lr"])
        rows = (run / "metrics.jsonl").read_text().splitlines()
        assert len(rows) == max(t.intermediate_values) == (1 if t.state.name == "PRUNED" else 2)
        assert (run / "console.log").read_text().count("epoch 1/2") == 1


@pytest.mark.slow  # two worker processes: about 30 s on 2 idle cores
def test_trials_csv_lists_every_trial(study):
    with open(study["exp"] / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["number"]) for r in rows] == list(range(TRIALS))
    assert {"state", "val_acc", "epochs", "optim.lr", "run_dir"} <= set(rows[0])
    assert (rows[0]["state"], rows[0]["epochs"]) == ("complete", "2")
    assert (rows[1]["state"], rows[1]["epochs"]) == ("pruned", "1")
    assert float(rows[1]["optim.lr"]) == BAD_LR


@pytest.mark.slow  # two worker processes: about 30 s on 2 idle cores
def test_best_recipe_is_the_best_trial_and_trains(study, tmp_path, capsys):
    trials = _trials(study["exp"])
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    recipe = study["exp"] / "best.yaml"
    header = recipe.read_text().splitlines()[0]
    assert header.startswith(f"# best trial of imgcls tune study 'tune-space': trial {best.number}")
    # the recipe is the trial's config, apart from where runs are written
    trial_cfg = load_yaml(study["exp"] / f"trial-{best.number:04d}" / "config.yaml")
    recipe_cfg = load_yaml(recipe)
    assert recipe_cfg["log"]["name"] == "" and recipe_cfg["log"]["output"] == str(study["out"])
    assert trial_cfg.pop("resolved")["data.loader"]  # what the trial made of auto: a record
    assert {**recipe_cfg, "log": None} == {**trial_cfg, "log": None}
    code, _, err = run_cli(capsys, "train", "--config", str(recipe), "--epochs", "1",
                           "--output", str(tmp_path), "--name", "again")
    assert code == 0, err
    again = build_config(load_yaml(tmp_path / "again" / "config.yaml"))
    assert again.optim.lr == best.params["optim.lr"] and (
        tmp_path / "again" / "checkpoints" / "best.pt").is_file()


@pytest.mark.slow  # two worker processes: about 30 s on 2 idle cores
def test_rerun_continues_up_to_trials_in_all(study, tmp_path, capsys):
    out = tmp_path / "runs"
    shutil.copytree(study["out"], out)  # a copy: the other tests keep the original
    exp = out / "tune-space"
    code, stdout, err = run_cli(capsys, *_tune_args(study["space"], study["data"], out))
    assert code == 0, err
    assert "already holds 4 trials" in err and len(_trials(exp)) == TRIALS
    assert stdout.count("\n") >= TRIALS + 1  # the table, all the same
    code, _, err = run_cli(capsys, *_tune_args(study["space"], study["data"], out, TRIALS + 1))
    assert code == 0, err
    trials = _trials(exp)
    assert len(trials) == TRIALS + 1 and "4 of 5 trials done or running" in err
    assert (exp / f"trial-{trials[-1].number:04d}" / "metrics.jsonl").is_file()


# --------------------------------------------------------------------------- failures


class _InterruptAtStart(Callback):
    def on_fit_start(self, trainer: Trainer) -> None:
        raise KeyboardInterrupt


def test_interrupted_trial_does_not_count_and_diverged_one_fails(tmp_path):
    from imgcls.experiments.tune import TuneInterrupted, tune

    data = _make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=8, size=16)
    base = tune_base(tmp_path, data)
    space = _write(tmp_path / "s.yaml", "optim.lr: {choice: [1000.0]}\n")  # diverges at once
    with pytest.raises(TuneInterrupted, match="trial 0 stopped and does not count"):
        tune(base, space, 1, pruner="none", callbacks=[_InterruptAtStart()])
    result = tune(base, space, 1, pruner="none")  # runs trial 1: trial 0 did not count
    assert [(r.number, r.state) for r in result.rows] == [(0, "interrupted"), (1, "fail")]
    assert "non-finite" in result.rows[1].note and result.ran == 1
    assert result.best is None and not (result.experiment / "best.yaml").exists()
    assert "interrupted" in result.table and "non-finite" in result.table
    # a study keeps the space, base config and metric it was made with
    other = _write(tmp_path / "s2.yaml", "optim.lr: {choice: [0.1]}\n")
    with pytest.raises(ImgclsError, match=r"optim\.lr=\{'choice': \[1000\.0\]\}"):
        tune(base, other, 2, name="tune-s", pruner="none")
    with pytest.raises(ImgclsError, match="train.epochs=2, this command says 3"):
        tune(build_config(base, {"train.epochs": 3}), space, 2, pruner="none")
    assert len(_trials(result.experiment)) == 2  # refused before any trial


def test_a_trial_asked_for_when_the_study_is_full_is_dropped(tmp_path):
    # two workers asking for the last place at the same moment: the later trial never trains
    from imgcls.experiments import tune as tuning
    from imgcls.experiments.tune_results import trial_rows
    from imgcls.metric_table import get_monitor

    study = optuna.create_study(direction="maximize")
    params = load_space(_write(tmp_path / "s.yaml", "optim.lr: {uniform: [0.1, 1]}\n"),
                        build_config())
    tuner = tuning._Tuner(optuna, study, build_config(), params, 1, tmp_path,
                          get_monitor("val_acc"), [])
    first, late = study.ask(), study.ask()  # both asked while the study held none
    study.tell(first, 0.5)
    with pytest.raises(tuning._Surplus):
        tuner.objective(late)
    study.tell(late, state=optuna.trial.TrialState.FAIL)
    assert [r.number for r in trial_rows(study.get_trials())] == [0]
    assert len(tuner.counted()) == 1 and tuner.ran == 0 and not list(tmp_path.glob("trial-*"))


# --------------------------------------------------------------------------- the command


def test_without_optuna_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    code, _, err = run_cli(capsys, "tune", "--space", str(tmp_path / "s.yaml"), "--trials", "2")
    assert_one_line_error(code, err, 'pip install "imgcls[tune]"')


@pytest.mark.parametrize(("flags", "needle"), [
    (["--trials", "0"], "--trials 0"),
    (["--trials", "2", "--pruner", "threshold"], "--prune-threshold"),
    (["--trials", "2", "--prune-threshold", "0.5"], "--prune-threshold"),
    (["--trials", "2", "--prune-after", "0"], "--prune-after 0"),
    (["--trials", "2", "--storage", "nosuchdb://x"], "--storage nosuchdb://x"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, flags, needle):
    space = _write(tmp_path / "s.yaml", "optim.lr: {log_uniform: [1e-3, 1]}\n")
    code, _, err = run_cli(capsys, "tune", "--space", str(space), *flags,
                           "--output", str(tmp_path / "runs"))
    assert_one_line_error(code, err, needle)
    if "--storage" not in flags:  # checked before anything is written
        assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- the space file


def test_space_reads_every_kind_and_optuna_draws_inside_it(tmp_path):
    path = _write(tmp_path / "space.yaml", """\
optim.lr: {log_uniform: [1e-3, 1]}        # the issue's example: YAML reads 1e-3 as text
optim.momentum: {uniform: [0.8, 0.99]}
loader.batch_size: {int: [16, 64], step: 16}
optim:
  name: {categorical: [sgd, adamw]}
  nesterov: {choice: [false]}
train.epochs: {log_int: [1, 8]}
""")
    params = load_space(path, build_config())
    assert {p.key: p.spec() for p in params} == {
        "optim.lr": {"log_uniform": [0.001, 1.0]}, "optim.momentum": {"uniform": [0.8, 0.99]},
        "loader.batch_size": {"int": [16, 64], "step": 16},
        "optim.name": {"choice": ["sgd", "adamw"]}, "optim.nesterov": {"choice": [False]},
        "train.epochs": {"log_int": [1, 8]}}
    study = optuna.create_study()
    for _ in range(12):
        trial = study.ask()
        values = {p.key: p.suggest(trial) for p in params}
        assert 1e-3 <= values["optim.lr"] <= 1 and 0.8 <= values["optim.momentum"] <= 0.99
        assert values["loader.batch_size"] in (16, 32, 48, 64)
        assert values["optim.name"] in ("sgd", "adamw") and 1 <= values["train.epochs"] <= 8
        build_config(overrides=values)  # every draw is a valid config
        study.tell(trial, 0.0)
    assert trial.distributions["optim.lr"].log and not trial.distributions["optim.momentum"].log


@pytest.mark.parametrize(("text", "needles"), [
    ("optim.lrr: {uniform: [0.1, 1]}",
     ["'optim.lrr' is not a config key", "did you mean optim.lr"]),
    ("optim.lr: 0.1", ["optim.lr: expected one of", "KEY=VALUE"]),
    ("optim.lr: {gaussian: [0, 1]}", ["optim.lr: expected one of"]),
    ("optim.lr: {uniform: [1, 0.1]}", ["optim.lr: uniform range [1, 0.1] is empty"]),
    ("optim.lr: {uniform: [0.1]}", ["optim.lr: uniform needs [low, high]"]),
    ("optim.lr: {log_uniform: [0, 1]}", ["optim.lr: log_uniform", "above 0"]),
    ("optim.lr: {uniform: [-1, 1]}", ["optim.lr = -1.0 is invalid: must be > 0"]),
    ("data.val_fraction: {uniform: [0.1, 1.5]}", ["data.val_fraction = 1.5 is invalid"]),
    ("loader.batch_size: {uniform: [16, 64]}", ["loader.batch_size takes an integer"]),
    ("loader.batch_size: {int: [16, 64.5]}", ["loader.batch_size: int needs", "integers"]),
    ("loader.batch_size: {int: [16, 64], step: 10}", ["step 10", "high - low = 48"]),
    ("optim.lr: {uniform: [0.1, 1], step: 0.1}", ["optim.lr: expected one of"]),
    ("optim.name: {choice: [sgd, rmsprop]}", ["optim.name = 'rmsprop' is invalid"]),
    ("optim.name: {choice: []}", ["optim.name: choice needs a non-empty list"]),
    ("optim.name: {uniform: [0, 1]}", ["optim.name is not a number"]),
    ("transforms.crop_padding: {choice: [[4], [0, 2, 3, 4]]}", ["not a single value"]),
    ("optim.name: {choice: [sgd, sgd]}", ["lists a value twice"]),
    ("log.output: {choice: [a, b]}", ["log.output cannot be searched"]),
    ("train.monitor: {choice: [val_acc, val_loss]}", ["train.monitor cannot be searched"]),
    ("optim.lr: {uniform: [0.1, 1]}\noptim: {lr: {uniform: [0.1, 0.2]}}",
     ["optim.lr is given twice"]),
    ("", ["no keys to search"]),
    ("[1, 2]", ["expected a mapping"]),
    ("optim.lr: {uniform: [0.1, 1", ["cannot read"]),
])
def test_space_errors_name_the_file_and_key(tmp_path, text, needles):
    path = _write(tmp_path / "space.yaml", text + "\n")
    with pytest.raises(ImgclsError) as caught:
        load_space(path, build_config())
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    for needle in needles:
        assert needle in message, (needle, message)


def test_missing_space_file_names_it(tmp_path):
    with pytest.raises(ImgclsError, match=r"--space: config file not found: .*nope\.yaml"):
        load_space(tmp_path / "nope.yaml", build_config())


def test_space_values_are_checked_against_the_base_config(tmp_path):
    # adam with the default nesterov=true is a config the trials could never train
    path = _write(tmp_path / "space.yaml", "optim.name: {choice: [sgd, adam]}\n")
    with pytest.raises(ImgclsError, match="optim.nesterov"):
        load_space(path, build_config())
    assert load_space(path, build_config(overrides={"optim.nesterov": False}))[0].choices == (
        "sgd", "adam")
    assert yaml.safe_load(path.read_text())  # the file itself is untouched
