"""imgcls train against the seed tutorial's own loop, on the same images, model and recipe.

The tutorial way (seed 001): torchvision ImageFolder, PIL transforms (RandomCrop(32, padding=
[0, 2, 3, 4]), RandomHorizontalFlip, ToTensor), a DataLoader with batch 32, SGD lr 0.01 momentum
0.9, and the plain loop that calls ``.item()`` on every batch. imgcls runs
``configs/simple_v3_seed.yaml`` with the epochs cut. Both hold out the same 10% (5,000 images of
CIFAR-10's training split) for validation: the tutorial loop reads imgcls's ``split.json``.

    python benchmarks/train_vs_tutorial.py --data ../shared/data/cifar10/train --epochs 3

Prints seconds per epoch and val accuracy per epoch for both, and the speed ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from imgcls import api
from imgcls.config import ModelConfig, build_config, flatten, load_yaml
from imgcls.models import create_model

ROOT = Path(__file__).resolve().parent.parent


def tutorial_epochs(data: Path, split: dict, epochs: int) -> list[dict[str, float]]:
    """Seed 001's training loop, as written there (per-batch .item(), PIL transforms)."""
    torch.manual_seed(0)
    train_tf = transforms.Compose([
        transforms.RandomCrop(32, padding=[0, 2, 3, 4]),
        transforms.RandomHorizontalFlip(p=0.5),
        transforms.ToTensor(),
    ])
    full_train = datasets.ImageFolder(str(data), transform=train_tf)
    full_val = datasets.ImageFolder(str(data), transform=transforms.ToTensor())
    index = {Path(p).relative_to(data).as_posix(): i for i, (p, _) in enumerate(full_train.samples)}
    train_data = Subset(full_train, [index[p] for p in split["train"]])
    val_data = Subset(full_val, [index[p] for p in split["val"]])
    train_loader = DataLoader(train_data, batch_size=32, shuffle=True)
    val_loader = DataLoader(val_data, batch_size=32)
    model = create_model(ModelConfig(name="simple_v3"), 10)  # CIFAR10_Net_Simple_v3's layers
    loss_function = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[8, 16, 24, 32],
                                                     gamma=0.5)
    results = []
    for epoch in range(epochs):
        start = time.perf_counter()
        model.train()
        train_loss, train_acc = 0.0, 0.0
        for imgs, targets in train_loader:
            output = model(imgs)
            acc = (output.argmax(dim=1) == targets).float().sum()
            loss = loss_function(output, targets)
            train_loss += loss.item()
            train_acc += acc
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        test_acc = 0.0
        with torch.no_grad():
            for imgs, targets in val_loader:
                output = model(imgs)
                test_acc += (output.argmax(dim=1) == targets).float().sum()
        scheduler.step()
        seconds = time.perf_counter() - start
        results.append({"epoch": epoch + 1, "epoch_time_s": seconds,
                        "val_acc": float(test_acc) / len(val_data)})
        print(f"tutorial epoch {epoch + 1}: {seconds:.1f}s val_acc {results[-1]['val_acc']:.4f}",
              flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/cifar10/train")
    parser.add_argument("--epochs", type=int, default=3, help="imgcls epochs")
    parser.add_argument("--tutorial-epochs", type=int, default=1)
    args = parser.parse_args()
    data = args.data.resolve()

    with tempfile.TemporaryDirectory() as tmp:
        recipe = flatten(load_yaml(ROOT / "configs/simple_v3_seed.yaml"))
        recipe.update({"data.source": str(data), "data.val_fraction": 0.1,
                       "train.epochs": args.epochs, "log.output": tmp, "log.name": "bench",
                       "log.progress": "off"})
        result = api.train(build_config(overrides=recipe))
        rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
        split = json.loads((result.run_dir / "split.json").read_text())
    for row in rows:
        print(f"imgcls epoch {row['epoch']}: {row['epoch_time_s']:.1f}s "
              f"val_acc {row['val_acc']:.4f}", flush=True)
    tutorial = tutorial_epochs(data, split, args.tutorial_epochs)

    ours = sum(r["epoch_time_s"] for r in rows) / len(rows)
    theirs = sum(r["epoch_time_s"] for r in tutorial) / len(tutorial)
    print(f"\nval images: {len(split['val'])}, train images: {len(split['train'])}")
    print(f"seconds per epoch: imgcls {ours:.1f}, tutorial loop {theirs:.1f}; "
          f"speed ratio (tutorial / imgcls) {theirs / ours:.2f}x")
    print(f"val_acc after epoch 1: imgcls {rows[0]['val_acc']:.4f}, "
          f"tutorial {tutorial[0]['val_acc']:.4f}")


if __name__ == "__main__":
    main()
