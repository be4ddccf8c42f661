"""Issue 26's honesty checks of Grad-CAM on a real model: fast_small trained on CIFAR-10.

**The model.** ``--checkpoint`` (any single-label run's checkpoint trained at 32 px), or else
the bundled ``fast_small`` recipe trained on ``--data`` (default ``../shared/data/cifar10``, its
``train/``; 45,000 / 5,000 split) for ``--epochs`` (default 10) under ``--work``.

**The pointing game.** ``--images`` (default 1,000) validation images of the run's own split,
each pasted at 32 x 32 into one of the four quadrants (seeded) of a 64 x 64 canvas of the
images' mean colour, so that the only class evidence is in that quadrant. fastnet_s ends in a
global max-pool and takes the larger canvas as it is. Grad-CAM of the image's true class at the
layer ``imgcls explain`` chooses at 64 px; a hit when the map's peak lies in the image's
quadrant. Chance is 25%. Reported over all images and over those the model classifies right
on the canvas.

**The randomisation check** (Adebayo et al., 2018). The same canvases, Grad-CAM of the
true class with the trained weights and again after re-initialising every layer
(``reset_parameters``, seeded): Spearman's rank correlation between the two maps of each image
(at the layer's own resolution, before upsampling, which would add shared smoothness), mean
and quartiles. Maps that show what the model learned change when the weights are random.

    python benchmarks/explain_checks.py                   # trains fast_small (about 10 min)
    python benchmarks/explain_checks.py --checkpoint runs/NAME/checkpoints/best.pt

Prints the machine, commit and command, the figures, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from own_folder import cpu_model, git_commit
from scipy.stats import spearmanr
from tutorial_data import add_data_argument, resolve_folder

from imgcls import api, recipes
from imgcls.config import build_config, flatten, load_yaml
from imgcls.data import load_rgb
from imgcls.deploy.load import LoadedModel, load_model
from imgcls.explain.attribution import heatmaps, peak_of
from imgcls.explain.target_layer import choose_target_layer


def train_fast_small(data: Path, work: Path, epochs: int) -> Path:
    recipe = flatten(load_yaml(recipes.find("fast_small")), where=" fast_small")
    cfg = build_config(overrides={**recipe,
        "data.source": str(data), "data.root": str(work / "cache"),  # not the cwd's data/
        "train.epochs": epochs, "log.output": str(work),
        "log.name": "explain-fast-small", "log.progress": "off", "log.tensorboard": False})
    return api.train(cfg).run_dir / "checkpoints" / "last.pt"


def validation_images(loaded: LoadedModel, checkpoint: Path, data: Path, n: int,
                      seed: int) -> tuple[list[Path], list[int]]:
    split = json.loads((checkpoint.parent.parent / "split.json").read_text())["val"]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(split), size=min(n, len(split)), replace=False).tolist())
    files = [data / split[i] for i in chosen]
    return files, [loaded.classes.index(f.parent.name) for f in files]


def normalise(loaded: LoadedModel, pixels: np.ndarray) -> torch.Tensor:
    image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    if loaded.mean_std is not None:
        mean, std = (torch.tensor(v)[:, None, None] for v in loaded.mean_std)
        image = (image - mean) / std
    return image


def canvases(loaded: LoadedModel, files: list[Path], seed: int
             ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Each image at 32 x 32 in a seeded quadrant of a 64 x 64 canvas of the images' mean
    colour, normalised as the model's inputs; and each image's quadrant corner (x, y)."""
    rng = np.random.default_rng(seed + 1)
    pictures = [np.asarray(load_rgb(str(f)).resize((32, 32))) for f in files]
    background = np.mean([p.reshape(-1, 3).mean(0) for p in pictures], axis=0)
    images, corners = [], []
    for pixels in pictures:
        canvas = np.empty((64, 64, 3), np.uint8)
        canvas[:] = background.round().astype(np.uint8)
        q = int(rng.integers(4))
        y, x = 32 * (q // 2), 32 * (q % 2)
        canvas[y:y + 32, x:x + 32] = pixels
        images.append(normalise(loaded, canvas))
        corners.append((x, y))
    return torch.stack(images), corners


def pointing_game(loaded: LoadedModel, images: torch.Tensor, corners: list[tuple[int, int]],
                  truth: list[int]) -> dict[str, float]:
    target = choose_target_layer(loaded.model, 64)
    hits, right_hits, right = [], [], []
    for start in range(0, len(images), 50):
        batch = images[start:start + 50]
        classes = torch.tensor(truth[start:start + 50])
        with torch.no_grad():
            predicted = loaded.model(batch).argmax(1)
        maps = heatmaps(loaded.model, batch, classes, target=target)
        for heatmap, (x, y), p, t in zip(maps, corners[start:start + 50], predicted.tolist(),
                                         classes.tolist(), strict=True):
            px, py = peak_of(heatmap)
            hit = x <= px < x + 32 and y <= py < y + 32
            hits.append(hit)
            right.append(p == t)
            if p == t:
                right_hits.append(hit)
    return {"hit_rate": float(np.mean(hits)), "images": len(hits),
            "hit_rate_correct": float(np.mean(right_hits)) if right_hits else float("nan"),
            "correct_on_canvas": float(np.mean(right)), "layer": target.name,
            "grid": list(target.grid)}


def layer_maps(loaded: LoadedModel, images: torch.Tensor, truth: list[int]) -> torch.Tensor:
    """Grad-CAM at the layer's own resolution (Captum's, before upsampling)."""
    from captum.attr import LayerGradCam

    from imgcls.explain.attribution import hooked_layer

    target = choose_target_layer(loaded.model, images.shape[-1])
    with hooked_layer(loaded.model, target) as layer:
        maps = LayerGradCam(loaded.model, layer).attribute(
            images, target=torch.tensor(truth), relu_attributions=False)
    return maps.detach()[:, 0]


def randomisation(loaded: LoadedModel, images: torch.Tensor, truth: list[int], seed: int
                  ) -> dict[str, float]:
    trained = torch.cat([layer_maps(loaded, images[i:i + 100], truth[i:i + 100])
                         for i in range(0, len(images), 100)])
    torch.manual_seed(seed)
    for module in loaded.model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    loaded.model.eval()
    random = torch.cat([layer_maps(loaded, images[i:i + 100], truth[i:i + 100])
                        for i in range(0, len(images), 100)])
    rho = np.array([spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic
                    for a, b in zip(trained, random, strict=True)])
    rho = rho[np.isfinite(rho)]
    q1, median, q3 = np.percentile(rho, [25, 50, 75])
    return {"mean_spearman": float(rho.mean()), "q1": float(q1), "median": float(median),
            "q3": float(q3), "images": int(len(rho)), "grid": list(trained.shape[1:])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--checkpoint", type=Path, help="a run's checkpoint (else trains one)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/imgcls-explain"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = resolve_folder(args.data)
    command = "python benchmarks/explain_checks.py " + shlex.join(sys.argv[1:])
    print(f"imgcls {git_commit()}; CPU: {cpu_model()}; torch {torch.__version__}")
    print(f"command: {command}")
    start = time.perf_counter()
    checkpoint = args.checkpoint or train_fast_small(data, args.work, args.epochs)
    trained_s = time.perf_counter() - start
    loaded = load_model(checkpoint, device="cpu")
    files, truth = validation_images(loaded, checkpoint, data, args.images, args.seed)
    images, corners = canvases(loaded, files, args.seed)
    game = pointing_game(loaded, images, corners, truth)
    print(f"pointing game, {game['images']} validation images in one quadrant of a 64 px "
          f"canvas (chance 25%), Grad-CAM at {game['layer']} ({game['grid']}): peak in the "
          f"image's quadrant {game['hit_rate']:.1%}; {game['hit_rate_correct']:.1%} of the "
          f"{game['correct_on_canvas']:.1%} classified right on the canvas")
    check = randomisation(loaded, images, truth, args.seed)
    print(f"randomisation check, {check['images']} images: Spearman correlation of the trained "
          f"and re-initialised model's maps ({check['grid']}) mean {check['mean_spearman']:.3f}"
          f", quartiles {check['q1']:.3f} / {check['median']:.3f} / {check['q3']:.3f}")
    print(json.dumps({"pointing_game": game, "randomisation": check,
                      "checkpoint": str(checkpoint), "train_s": trained_s, "cpu": cpu_model(),
                      "commit": git_commit(), "command": command, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
