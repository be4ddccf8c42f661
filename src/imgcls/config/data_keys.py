"""The keys of what a run reads: ``data.*`` (the source and its splits), ``loader.*`` (batches)
and ``transforms.*`` (augmentation and normalisation)."""

from __future__ import annotations

from typing import Literal

from pydantic.dataclasses import dataclass

from imgcls.config.fields import (
    SECTION_CONFIG,
    Bool,
    Float,
    FloatList,
    ImageSizeKey,
    Int,
    IntList,
    check,
    key,
)
from imgcls.config.sizes import valid_size


@dataclass(frozen=True, config=SECTION_CONFIG)
class DataConfig:
    source: str = key("cifar10", "`digits` (bundled with scikit-learn, no download), `cifar10`, "
                      "`cifar100`, a `cifar-10-batches-py` folder, a folder of class folders, or "
                      "a list file (`.txt`)")
    root: str = key("./data", "where CIFAR is downloaded; base for list-file paths")
    val_fraction: Float = key(0.1, "fraction of each class held out when there is no "
                              "validation folder", ge=0, lt=1)
    val_split: Literal["holdout", "test", "none"] = key(
        "holdout", "`holdout`: validate on a `val/` folder or the `val_fraction` holdout; `test`: "
        "train on the whole training part and validate every epoch on the source's test split "
        "(CIFAR's, a folder's `test/`, the digits' or a `test_fraction` part), with a warning "
        "that choosing the best epoch on the test set flatters it; `none`: no validation")
    test_fraction: Float = key(
        0.0, "a single folder of class folders or a list file: also hold out this fraction of "
        "each class (stratified, seeded, in `split.json`) as the test split read by `imgcls "
        "evaluate --split test`; `val_fraction` is then a fraction of the whole too (`0.2` and "
        "`0.2`: 6:2:2)", ge=0, lt=1)
    download: Bool = key(True, "let torchvision download CIFAR", infra=True)
    skip_bad_images: Bool = key(False, "skip (and count) unreadable images instead of stopping")
    max_image_pixels: Int = key(
        89_478_485, "an image whose header claims more pixels (width x height) is a bad image, "
        "never decoded: a small PNG can claim 12000x12000 and take gigabytes. PIL's "
        "decompression-bomb limit (about 89.5 megapixels); `0`: no limit", ge=0,
        note="0: no limit")
    loader: Literal["auto", "memory", "dataloader"] = key(
        "auto", "`dataloader` (a DataLoader, per-image transforms), `memory` (decode once into a "
        "uint8 tensor on the training device, cached under `<data.root>/.imgcls-cache/`, and "
        "augment whole batches with tensor ops; random crop, flip, cutout and normalisation "
        "only), `auto` (`memory` when the images fit `data.memory_budget_mb` and the transforms "
        "allow it)")
    memory_budget_mb: Int = key(2048, "`data.loader=auto`: the most device memory the decoded "
                                "uint8 images (train + val) may take; the photo cache is read "
                                "into memory within it, else memory-mapped", ge=0)
    cache_side: Int | None = key(
        None, "the photo cache (random resized crops, e.g. the imagenet preset): each photo is "
        "decoded once with its shorter side resized to this many pixels (null: the evaluation "
        "resize, `image_size` x 256/224; smaller photos are kept as they are)", ge=1)
    disk_budget_mb: Int = key(
        20480, "`data.loader=auto`: the most disk the photo cache (under "
        "`<data.root>/.imgcls-cache/`) may take; a larger one, or one the free space cannot "
        "hold, leaves the photos to the DataLoader", ge=0)
    split_seed: Int | None = key(
        None, "seeds the validation holdout, the folds and the `test_fraction` part (null: "
        "`train.seed`); `imgcls repeat` pins it to its first seed", ge=0, note="or null: "
        "train.seed")
    folds: Int = key(
        0, "`K` >= 2: validate on fold `data.fold` of K seeded stratified folds of the training "
        "part instead of the `val_fraction` holdout (a `val/` folder is left out); needs "
        "`data.val_split=holdout` and at least K images per class. `imgcls cv` runs every fold")
    fold: Int = key(0, "with `data.folds`: the fold validated on, 0 to K-1")

    def check_rules(self) -> None:
        """The rules between keys, checked by build_config after each key's own."""
        check(bool(self.source), "data.source", self.source, "must not be empty")
        check(self.val_fraction + self.test_fraction < 1.0, "data.test_fraction",
              self.test_fraction,
              f"with data.val_fraction={self.val_fraction:g} it leaves no training images")
        check(self.folds == 0 or self.folds >= 2, "data.folds", self.folds,
              "0 (off) or at least 2")
        check(0 <= self.fold < max(self.folds, 1), "data.fold", self.fold,
              f"a fold index from 0 to {max(self.folds - 1, 0)} (data.folds={self.folds})")
        check(self.folds == 0 or self.val_split == "holdout", "data.val_split", self.val_split,
              "data.folds validates on a fold; it needs data.val_split=holdout")


@dataclass(frozen=True, config=SECTION_CONFIG)
class LoaderConfig:
    batch_size: Int = key(128, "training batch size per process (a distributed run's global "
                          "batch is this x world size x `train.accumulate`)", ge=1)
    eval_batch_size: Int | None = key(None, "evaluation batch size (null: 2 x batch_size)",
                                      ge=1, infra=True)
    shuffle: Bool = key(True, "shuffle the training set each epoch (seeded by `train.seed` and "
                        "the epoch)")
    num_workers: Int = key(0, "DataLoader worker processes (0 decodes in the training process)",
                           ge=0, infra=True)
    pin_memory: Bool | None = key(None, "pinned host memory (null: on when training on CUDA)",
                                  infra=True)
    drop_last: Bool = key(False, "drop each epoch's last incomplete training batch, unless it is "
                          "the only one (fewer training images than a batch: it trains)")
    persistent_workers: Bool = key(
        False, "keep workers alive between epochs (off when `train.deterministic=true`: workers "
        "are seeded once, and exact resume needs them reseeded per epoch)", infra=True)
    sampler: Literal["random", "balanced"] = key(
        "random", "`random` (shuffle); `balanced`: each epoch draws as many images as the "
        "training set, every class equally often (small classes repeated, large ones "
        "subsampled, a different part each epoch), seeded by `train.seed` and the epoch, sharded "
        "per process; both loaders. See [Imbalanced classes](own-data.md#imbalanced-classes)")

    def check_rules(self) -> None:
        """The rules between keys, checked by build_config after each key's own."""
        check(self.sampler != "balanced" or self.shuffle, "loader.shuffle", self.shuffle,
              "loader.sampler=balanced draws a seeded random order; it needs loader.shuffle=true")


@dataclass(frozen=True, config=SECTION_CONFIG)
class TransformConfig:
    preset: Literal["auto", "none", "cifar", "imagenet", "digits"] = key(
        "auto", "`auto` (cifar for inputs up to 64 px, else imagenet; digits for `--data "
        "digits`), `none`, `cifar` (random crop pad 4, flip), `imagenet` (random resized crop, "
        "flip; eval resize + center crop), `digits` (random crop pad 2, no flip); the keys you "
        "set win over the preset's", memory=True, photo=True)
    image_size: ImageSizeKey | None = key(
        None, "input size, >= 1: an int (square) or `[height, width]` (e.g. `[224, 320]`; "
        "`[n]` and `[n, n]` mean `n`) (null: the model's)", memory=True, photo=True)
    resize: Int | None = key(None, "resize the shorter side to this, then center-crop to "
                             "`image_size`", ge=1, photo=True)
    center_crop: Bool = key(False, "eval: resize the shorter side to max(image_size)*256/224 "
                            "and center-crop", photo=True)
    random_crop: Bool = key(False, "train: `RandomCrop(image_size, padding=crop_padding)`",
                            memory=True, photo=True)
    crop_padding: IntList = key([4], "1, 2 or 4 ints (left, top, right, bottom), e.g. the "
                                "seed's `[0, 2, 3, 4]`", memory=True, photo=True)
    crop_padding_mode: Literal["constant", "reflect", "edge"] = key(
        "constant", "what the crop's padding shows: `constant` (zeros), `reflect` (mirrored "
        "without the edge pixel, as airbench pads), `edge` (the edge pixel repeated)",
        memory=True, photo=True)
    random_resized_crop: Bool = key(False, "train: `RandomResizedCrop(image_size)`", photo=True)
    hflip: Float = key(0.0, "train: horizontal flip probability", ge=0, le=1, memory=True,
                       photo=True)
    flip_mode: Literal["random", "alternate"] = key(
        "random", "`random` (a coin per image per epoch) or `alternate` (airbench: each image "
        "flipped on every other epoch, from a seeded per-image start; needs the device-resident "
        "loader)", memory=True, photo=True)
    cutout: Int = key(0, "train: side in pixels of a square zeroed at a random place inside "
                      "each image, after normalisation (0: off)", ge=0, memory=True, photo=True)
    rotation: Float = key(0.0, "train: random rotation, max degrees")
    color_jitter: FloatList = key([], "train: `[brightness, contrast, saturation, hue]`",
                                  photo=True)
    grayscale: Float = key(0.0, "train: `RandomGrayscale` probability", ge=0, le=1, photo=True)
    affine_degrees: Float = key(0.0, "train: `RandomAffine` degrees")
    affine_translate: Float = key(0.0, "train: `RandomAffine` max translation (fraction)",
                                  ge=0, le=1)
    affine_scale: FloatList = key([], "train: `RandomAffine` scale `[min, max]`")
    auto_augment: Literal["none", "randaugment", "trivialaugment", "autoaugment"] = key(
        "none", "train: a learned or random augmentation policy on each image after the flips "
        "(torchvision's `RandAugment`, `TrivialAugmentWide`, `AutoAugment` with the CIFAR-10 "
        "policy up to 64 px, else ImageNet's); both loaders (the memory loaders draw the "
        "same policies per image and apply them to whole batches)", memory=True, photo=True)
    random_erasing: Float = key(0.0, "train: probability of erasing a random rectangle of each "
                                "image after normalisation (torchvision's `RandomErasing`: "
                                "2-33% of the area, to the mean colour); both loaders", ge=0,
                                le=1, memory=True, photo=True)
    mixup: Float = key(0.0, "train: MixUp's alpha (0: off; 0.2-0.8 usual): each batch is mixed "
                       "with itself reversed, `lam ~ Beta(alpha, alpha)`, and the loss takes the "
                       "mixed labels; both loaders", ge=0, memory=True, photo=True)
    cutmix: Float = key(0.0, "train: CutMix's alpha (0: off; 1.0 usual): a box of each image is "
                        "pasted from another in the batch, the labels mixed by area; with "
                        "`mixup` too, each batch gets one of the two at random; both loaders",
                        ge=0, memory=True, photo=True)
    normalize: Literal["auto", "dataset", "imagenet", "half", "none", "custom"] = key(
        "auto", "`auto` (ImageNet stats for torchvision/pretrained models, the dataset's for "
        "CIFAR, else ImageNet), `dataset`, `imagenet`, `half` (0.5/0.5), `none`, `custom` "
        "(`mean` and `std`)", memory=True, photo=True)
    mean: FloatList = key([], "per-channel means for `normalize: custom`", memory=True, photo=True)
    std: FloatList = key([], "per-channel standard deviations for `normalize: custom`",
                         memory=True, photo=True)

    def check_rules(self) -> None:
        """The rules between keys, checked by build_config after each key's own."""
        check(valid_size(self.image_size), "transforms.image_size", self.image_size,
              "must be >= 1, or [height, width] of ints >= 1")
        pad = self.crop_padding
        check(len(pad) in (1, 2, 4) and min(pad) >= 0, "transforms.crop_padding", pad,
              "1, 2 or 4 non-negative ints")
        jitter = self.color_jitter
        check(len(jitter) in (0, 4) and all(v >= 0 for v in jitter), "transforms.color_jitter",
              jitter, "[brightness, contrast, saturation, hue] >= 0")
        check(not jitter or jitter[3] <= 0.5, "transforms.color_jitter", jitter,
              "hue must be <= 0.5")
        check(len(self.affine_scale) in (0, 2), "transforms.affine_scale", self.affine_scale,
              "[min, max]")
        if self.normalize == "custom":
            check(len(self.mean) == len(self.std) > 0 and all(v > 0 for v in self.std),
                  "transforms.mean/std", (self.mean, self.std),
                  "custom needs equal-length mean and std > 0")
