"""Kill a training run with SIGKILL again and again, resume it each time, and check that nothing
is lost or left inconsistent (issue 13's soak).

A small deterministic CPU run (the built-in digits data, lenet, a mid-epoch checkpoint every few
steps) is trained once without interruption, then trained again under fire: each segment is a
child process that resumes the run and is killed with SIGKILL, either after a random delay or at
a targeted moment (start-up, inside an epoch, during validation, just before and just after each
checkpoint rename, right after a metrics row, after the last epoch). The targeted kills are the
child sending SIGKILL to itself at that instant, from a patched function.

Printed at the end:
  resumable        segments whose --resume started (or repaired) without an error / N
  steps lost       optimizer steps done before a kill but not in last.pt (max, median), against
                   the checkpoint interval
  consistent       resumes after which, before training on, metrics.jsonl had exactly one row
                   per saved epoch, best.pt held the best epoch and no temporary file was left
  temp files left  at the end
  final weights    bit-identical to the uninterrupted run

Then two cases of issue 29's:
  concurrent       rounds of two trainings of one run folder at once (two `--name X` started
                   together, or a `--resume` of a run still training, as soon as it saved): one
                   trains, the other exits 2 naming the PID that holds the folder, and every
                   epoch has one metrics row
  tune kills       `imgcls tune` SIGKILLed inside a trial, then rerun: the trial resumes from
                   its last.pt and the study ends with --trials complete trials, rows once

    python benchmarks/kill_soak.py --kills 24 --concurrent 4 --tune-kills 3

The last line is the same as one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = (
    "startup",  # while the data and model are being set up
    "validation",  # inside an epoch's validation pass
    "before_rename:last.pt",  # the new last.pt is written to its temporary file, not renamed
    "after_rename:last.pt",  # last.pt is in place; best.pt and the metrics row are not
    "before_rename:best.pt",
    "after_rename:best.pt",
    "after_row",  # the epoch's metrics row is written; results.csv is not
    "after_fit",  # the last epoch is done and saved; the process has not said so
)

# --------------------------------------------------------------------------- the child


def child(run: Path, overrides: dict, target: str, nth: int) -> None:
    """One segment: start or resume the run; die by SIGKILL at ``target``'s ``nth`` time."""
    from imgcls import api, files
    from imgcls.engine import trainer as trainer_module
    from imgcls.engine.loop import TrainState
    from imgcls.errors import ImgclsError
    from imgcls.runs.checkpoint import load_checkpoint
    from imgcls.tracking import RunLogger

    count = {"n": 0}

    def maybe_die(event: str) -> None:
        if event == target:
            count["n"] += 1
            if count["n"] >= nth:
                os.kill(os.getpid(), signal.SIGKILL)

    step = TrainState.optimizer_step

    def optimizer_step(self: TrainState) -> None:
        step(self)
        print(f"step {self.step}", flush=True)

    TrainState.optimizer_step = optimizer_step  # type: ignore[method-assign]

    replace = files.os.replace

    def os_replace(src: str, dst: str) -> None:
        name = Path(dst).name
        maybe_die(f"before_rename:{name}")
        replace(src, dst)
        maybe_die(f"after_rename:{name}")

    files.os.replace = os_replace  # type: ignore[assignment]

    log_epoch = RunLogger.log_epoch

    def logged(self: RunLogger, metrics: dict) -> None:
        log_epoch(self, metrics)
        maybe_die("after_row")

    RunLogger.log_epoch = logged  # type: ignore[method-assign]

    validate = trainer_module.Trainer.validate

    def validating(self):  # type: ignore[no-untyped-def]
        maybe_die("validation")
        return validate(self)

    trainer_module.Trainer.validate = validating  # type: ignore[method-assign]

    run_epoch = trainer_module.Trainer.run_epoch
    checked = {"done": False}

    def first_epoch(self):  # type: ignore[no-untyped-def]
        if not checked["done"]:  # the records as --resume left them, before training on
            checked["done"] = True
            print("consistent " + json.dumps(consistency(run, load_checkpoint)), flush=True)
        return run_epoch(self)

    trainer_module.Trainer.run_epoch = first_epoch  # type: ignore[method-assign]

    fit = trainer_module.Trainer.fit

    def fitted(self):  # type: ignore[no-untyped-def]
        out = fit(self)
        maybe_die("after_fit")
        return out

    trainer_module.Trainer.fit = fitted  # type: ignore[method-assign]

    maybe_die("startup")
    try:
        if (run / "checkpoints" / "last.pt").exists():
            api.train(resume=run)
        else:
            from imgcls.config import build_config

            api.train(build_config(overrides=overrides))
    except ImgclsError as exc:
        if "already finished" not in str(exc):
            print(f"error {exc}", flush=True)
            raise SystemExit(2) from None
    print("finished", flush=True)


def consistency(run: Path, load_checkpoint) -> dict:  # type: ignore[no-untyped-def]
    """What a resume must leave: one metrics row per saved epoch, best.pt = the best epoch,
    no temporary file."""
    path = run / "checkpoints" / "last.pt"
    last = load_checkpoint(path) if path.exists() else {}  # a new run (or one started over)
    epoch = int(last.get("epoch") or 0)
    rows = []
    if (run / "metrics.jsonl").exists():
        rows = [json.loads(x)["epoch"] for x in
                (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    best_ok = True
    if last.get("best_epoch") is not None:
        best = run / "checkpoints" / "best.pt"
        best_ok = best.exists() and load_checkpoint(best).get("epoch") == last["best_epoch"]
    temps = [str(p) for p in run.rglob("*.tmp")]
    return {"rows_ok": rows == list(range(1, epoch + 1)), "best_ok": best_ok,
            "temps": temps, "epoch": epoch}


# --------------------------------------------------------------------------- the parent


def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "imgcls", *argv]


def _epochs_logged(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x)["epoch"] for x in path.read_text().splitlines() if x.strip()]


def concurrent_rounds(work: Path, rounds: int, short: int) -> dict:
    """Two writers of one run folder per round: two `--name X` started together, or, every
    other round, a `--resume` of the run as soon as its first checkpoint is written."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = ["train", "--data", "digits", "--model", "lenet", "--output", str(work / "pairs"),
             f"data.root={work / 'data'}", "log.progress=off", "log.tensorboard=false"]
    good, notes = 0, []
    for i in range(rounds):
        name, mode = f"pair-{i}", ("together", "resume")[i % 2]
        run = work / "pairs" / name
        # a resume must come while the run still trains: longer than a process's start-up
        epochs = short if mode == "together" else 5 * short
        first = subprocess.Popen(_cli(*train, "--name", name, "--epochs", str(epochs)),
                                 stderr=subprocess.PIPE, text=True, env=env)
        second_argv = ["--name", name, "--epochs", str(epochs)]
        if mode == "resume":
            while not (run / "checkpoints" / "last.pt").exists() and first.poll() is None:
                time.sleep(0.02)
            second_argv = ["--resume", str(run), f"train.epochs={epochs + 1}"]
        second = subprocess.run(_cli(*train, *second_argv), stderr=subprocess.PIPE, text=True,
                                env=env, timeout=900)
        first_err = first.communicate(timeout=900)[1]
        codes = sorted([first.returncode, second.returncode])
        loser = second.stderr if second.returncode else first_err
        refused = "is in use by another training (PID" in loser or "already holds" in loser
        rows = _epochs_logged(run)
        ok = codes == [0, 2] and refused and rows == list(range(1, epochs + 1))
        good += bool(ok)
        last = (loser.strip().splitlines() or [""])[-1]
        notes.append(f"concurrent {i}: {mode}: exit codes {codes}, rows {rows}, the other: "
                     f"{last[:120]}")
    return {"rounds": rounds, "good": good, "notes": notes}


def tune_kills(work: Path, kills: int, rng: random.Random) -> dict:
    """``imgcls tune --trials 2`` SIGKILLed inside a trial ``kills`` times (each after a row
    of that trial's), then run to its end: every trial complete, each epoch's row once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    space = work / "space.yaml"
    space.write_text("optim.lr: {choice: [0.02, 0.05]}\n")
    out = work / "tune"
    argv = _cli("tune", "--space", str(space), "--trials", "2", "--pruner", "none", "--data",
                "digits", "--model", "lenet", "--epochs", "4", "--output", str(out),
                f"data.root={work / 'data'}", "log.progress=off", "log.tensorboard=false")
    exp, done, notes = out / "tune-space", 0, []
    for k in range(kills):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env)
        rows_before = {t: len(_epochs_logged(t)) for t in exp.glob("trial-*")}
        wait_rows = rng.randint(1, 3)
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            grown = [t for t in exp.glob("trial-*")
                     if len(_epochs_logged(t)) >= rows_before.get(t, 0) + wait_rows]
            if grown:
                proc.kill()
                break
            time.sleep(0.02)
        proc.wait()
        killed = proc.returncode == -signal.SIGKILL
        done += killed
        how = f"killed after {wait_rows} row(s)" if killed else "the study ended first"
        notes.append(f"tune kill {k + 1}: {how}")
    final = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    with (exp / "trials.csv").open() as handle:
        trials = list(csv.DictReader(handle))
    complete = sum(r["state"] == "complete" for r in trials)
    rows_once = all(_epochs_logged(t) == [1, 2, 3, 4] for t in exp.glob("trial-*")
                    if (t / "metrics.jsonl").exists())
    running = sum(r["state"] == "running" for r in trials)
    notes.append(f"tune: final command exit {final.returncode}; trials "
                 f"{[(r['number'], r['state']) for r in trials]}")
    return {"kills": done, "complete": complete, "running": running, "rows_once": rows_once,
            "code": final.returncode, "notes": notes}


def run_segment(run: Path, overrides: dict, target: str, nth: int, delay: float | None,
                timeout: float) -> dict:
    """One child; returns what it printed and how it ended."""
    cmd = [sys.executable, __file__, "--child", str(run), "--target", target, "--nth", str(nth),
           "--overrides", json.dumps(overrides)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    started = time.monotonic()
    if delay is not None:
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
    out, err = proc.communicate(timeout=timeout - (time.monotonic() - started))
    steps = [int(line.split()[1]) for line in out.splitlines() if line.startswith("step ")]
    consistent = [json.loads(line[len("consistent "):]) for line in out.splitlines()
                  if line.startswith("consistent ")]
    return {"code": proc.returncode, "steps": steps, "consistent": consistent,
            "finished": "finished" in out.splitlines(), "err": err.strip().splitlines()[-3:],
            "error": [line for line in out.splitlines() if line.startswith("error ")]}


def saved_step(run: Path) -> int:
    from imgcls.runs.checkpoint import load_checkpoint

    last = run / "checkpoints" / "last.pt"
    return int(load_checkpoint(last).get("step", 0)) if last.exists() else 0


def same_weights(a: Path, b: Path) -> bool:
    import torch

    from imgcls.runs.checkpoint import load_checkpoint

    wa = load_checkpoint(a / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(b / "checkpoints" / "last.pt")["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--every-steps", type=int, default=5,
                        help="train.checkpoint_every_steps (the checkpoint interval)")
    parser.add_argument("--seed", type=int, default=0, help="of the kill schedule")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    parser.add_argument("--concurrent", type=int, default=4,
                        help="rounds of two trainings of one run folder at once")
    parser.add_argument("--tune-kills", type=int, default=2,
                        help="SIGKILLs of `imgcls tune` inside a trial")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--target", default="", help=argparse.SUPPRESS)
    parser.add_argument("--nth", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, json.loads(args.overrides), args.target, args.nth)
        return

    work = Path(tempfile.mkdtemp(prefix="kill-soak-"))
    base = {"data.source": "digits", "data.root": str(work / "data"), "model.name": "lenet",
            "train.epochs": args.epochs, "train.deterministic": True,
            "train.checkpoint_every_steps": args.every_steps, "log.progress": "off",
            "log.output": str(work)}
    t0 = time.monotonic()
    whole = run_segment(work / "whole", {**base, "log.name": "whole"}, "", 1, None, 900)
    if not whole["finished"]:
        raise SystemExit(f"the uninterrupted run failed: {whole['err']}")
    total_steps = whole["steps"][-1]
    seconds = time.monotonic() - t0
    print(f"uninterrupted run: {total_steps} steps, {args.epochs} epochs in {seconds:.0f} s; "
          f"checkpoint every {args.every_steps} steps")

    rng = random.Random(args.seed)
    run = work / "soak"
    overrides = {**base, "log.name": "soak"}
    lost: list[int] = []
    failed: list[str] = []
    checks: list[dict] = []
    finished: list[bool] = []  # per run trained to its end: weights equal to the reference
    segments = kills = 0
    log: list[str] = []
    schedule = [*TARGETS[:-1], "random"]
    while kills < args.kills:
        # the last kill comes after the last epoch; the others cycle through the moments
        what = "after_fit" if kills == args.kills - 1 else schedule[segments % len(schedule)]
        if what == "random":
            target, nth, delay = "", 1, rng.uniform(1.0, max(2.0, seconds * 0.6))
        else:
            nth = 1 if what in ("startup", "after_fit") else rng.randint(1, 2)
            target, delay = what, None
        before = saved_step(run)
        seg = run_segment(run, overrides, target, nth, delay, 900)
        segments += 1
        checks += seg["consistent"]
        if seg["error"] or seg["code"] not in (0, -signal.SIGKILL):
            failed.append(f"segment {segments}: {seg['error'] or seg['err']}")
            break
        if seg["code"] == -signal.SIGKILL:
            kills += 1
            done, after = max(seg["steps"], default=before), saved_step(run)
            lost.append(max(0, done - after))
            log.append(f"kill {kills:2d} {what if not delay else f'random {delay:.1f}s'} "
                       f"(#{nth}): steps done {done}, saved {after}")
        else:  # the run ended before the moment came (best.pt is not written every epoch)
            finished.append(same_weights(work / "whole", run))
            log.append(f"run {len(finished)} finished before `{what}` came: weights "
                       f"{'equal' if finished[-1] else 'DIFFERENT'}; starting another")
            shutil.rmtree(run)
    # resume once more: repairs the run killed after its last epoch
    final = run_segment(run, overrides, "", 1, None, 900)
    segments += 1
    checks += final["consistent"]
    if final["error"] or final["code"] != 0:
        failed.append(f"segment {segments}: {final['error'] or final['err']}")
    from imgcls.runs.checkpoint import load_checkpoint

    checks.append(consistency(run, load_checkpoint))  # the finished run's records
    finished.append(not failed and same_weights(work / "whole", run))
    good = [c for c in checks if c["rows_ok"] and c["best_ok"] and not c["temps"]]
    pairs = concurrent_rounds(work, args.concurrent, 3)
    tuned = tune_kills(work, args.tune_kills, rng)
    temps = [str(p) for p in work.rglob("*.tmp")]
    print("\n".join(log + failed + pairs["notes"] + tuned["notes"]))
    print()
    print(f"kills                 {kills} (at: {', '.join(TARGETS)}, random moments)")
    print(f"resumable             {segments - len(failed)}/{segments} segments")
    print(f"steps lost            max {max(lost)}, median {statistics.median(lost):g} "
          f"(checkpoint interval {args.every_steps} steps; an epoch is "
          f"{total_steps // args.epochs})")
    print(f"records consistent    {len(good)}/{len(checks)} (after each resume, and at the end)")
    print(f"temp files left       {len(temps)}")
    print(f"final weights         {sum(finished)}/{len(finished)} runs bit-identical to the "
          "uninterrupted one")
    print(f"concurrent writers    {pairs['good']}/{pairs['rounds']} rounds: one trained, the "
          "other exited 2 naming the holder; one metrics row per epoch")
    print(f"tune kills            {tuned['kills']}: then {tuned['complete']}/2 trials complete, "
          f"{tuned['running']} left running, rows once: {tuned['rows_once']}")
    print(json.dumps({
        "kills": kills, "segments": segments, "resumable": segments - len(failed),
        "steps_lost_max": max(lost), "steps_lost_median": statistics.median(lost),
        "checkpoint_interval": args.every_steps, "consistent": len(good), "checks": len(checks),
        "temp_files_left": len(temps), "runs_equal": sum(finished), "runs": len(finished),
        "concurrent_rounds": pairs["rounds"], "concurrent_good": pairs["good"],
        "tune_kills": tuned["kills"], "tune_complete": tuned["complete"],
        "tune_running": tuned["running"], "tune_rows_once": tuned["rows_once"],
        "tune_code": tuned["code"],
    }))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"run folders: {work}")


if __name__ == "__main__":
    main()
