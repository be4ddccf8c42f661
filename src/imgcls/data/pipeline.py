"""From data to batches: the input size and normalisation a run uses, and the loaders that serve
its images (device-resident :class:`MemoryLoader` or a DataLoader), built the same way for
``train``, ``evaluate``, the LR finder and the benchmarks.

``data.loader`` picks the loader: ``memory`` decodes every image once (cached under
``<data.root>/.imgcls-cache``), keeps the uint8 tensor on the device and augments per batch
(photos trained with random resized crops: the photo cache and :class:`PhotoLoader`);
``dataloader`` runs torchvision transforms per image; ``auto`` takes memory when the images fit
``data.memory_budget_mb`` (the photo cache: ``data.disk_budget_mb`` and the free disk) and the
transforms are ones it can do.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset, Subset

from imgcls import runtime
from imgcls.config import Config
from imgcls.config.sizes import ImageSize, image_size, saved_size, size_hw
from imgcls.data.decode_cache import decode_to_tensor
from imgcls.data.digits import NAME as DIGITS
from imgcls.data.loaders import BatchLoader, EpochLoader, TransformedDataset, shard
from imgcls.data.memory import Augmentation, MemoryLoader, unsupported_transforms
from imgcls.data.photo_cache import CacheWriteError, estimate_bytes, photo_store
from imgcls.data.photo_loader import PhotoAugmentation, PhotoLoader, photo_unsupported
from imgcls.data.sources import DataSplit, dataset_labels
from imgcls.data.transforms import (
    apply_preset,
    build_transform,
    eval_resize,
    resolve_normalization,
)
from imgcls.errors import ImgclsError
from imgcls.models import get_model_info
from imgcls.models.user import channels_last_works, is_user_model, resolve_name
from imgcls.models.user import input_size as user_input_size
from imgcls.tracking import echo


@dataclass(frozen=True)
class Preprocessing:
    """What every image becomes before the model: its size (an int: square, else (H, W)) and its
    normalisation."""

    image_size: ImageSize
    mean_std: tuple[list[float], list[float]] | None
    note: str | None = None  # how the statistics were obtained, when it is news to the user


# Mean and std from at most this many training images (a seeded sample beyond): the third digit
# of each statistic no longer moves, and the decode stays seconds long.
STATS_IMAGES = 10_000


LoaderKind = Literal["memory", "photos", "dataloader"]
PIPELINES = {  # what the start line says reads the images
    "memory": "decoded into device memory",
    "photos": "decoded once into the photo cache",
    "dataloader": "read by a DataLoader",
}


@dataclass
class TrainLoaders:
    train: BatchLoader
    val: BatchLoader | None
    kind: LoaderKind
    where: str = ""  # the photo cache's folder and size, for the start line

    @property
    def in_memory(self) -> bool:
        """Decoded once (MemoryLoader or PhotoLoader) rather than read by a DataLoader."""
        return self.kind != "dataloader"

    def describe(self) -> str:
        return PIPELINES[self.kind] + (f" ({self.where})" if self.where else "")


def source_defaults(cfg: Config) -> Config:
    """What the config implies where the user left a key alone, made explicit before a run
    saves it: ``transforms.preset=auto`` on the digits means shifts without flips (a mirrored 2
    is no 2); a model class in a file is named by its absolute path, so the checkpoint finds it
    from any folder."""
    if cfg.data.source.strip().lower() == DIGITS and cfg.transforms.preset == "auto":
        cfg = replace(cfg, transforms=replace(cfg.transforms, preset="digits"))
    if is_user_model(cfg.model.name):
        cfg = replace(cfg, model=replace(cfg.model, name=resolve_name(cfg.model.name)))
        size = cfg.transforms.image_size or user_input_size(cfg.model.name)
        if cfg.train.channels_last and not channels_last_works(
                cfg.model.name, cfg.model.in_channels, size, cfg.model.kwargs):
            echo(f"{cfg.model.name} reshapes with .view(), which channels-last activations do "
                 "not allow: training in the default memory format (train.channels_last=false)")
            cfg = replace(cfg, train=replace(cfg.train, channels_last=False))
    return cfg


def resolve_preprocessing(cfg: Config, data: DataSplit, *, cache: bool = True) -> Preprocessing:
    """The input size (transforms.image_size, else the model's) and the normalisation. When
    it should be the data's own statistics and the source does not know them (folders, list
    files), they are computed from the training part once (cached with the decoded images,
    unless ``cache`` is false: a dry run writes nothing)."""
    info = get_model_info(cfg.model.name, cfg.model.pretrained)
    size = image_size(cfg.transforms.image_size or info.input_size)
    if info.fixed_size and size_hw(size) != size_hw(info.input_size):
        raise ImgclsError(
            f"transforms.image_size={saved_size(size)} does not suit {cfg.model.name}, which takes "
            f"{info.input_size}x{info.input_size} images only"
        )
    stats, note = data.mean_std, None
    wants = cfg.transforms.normalize == "dataset" or (
        cfg.transforms.normalize == "auto" and info.default_normalize == "dataset"
        and not cfg.model.pretrained)
    if stats is None and wants:
        stats, count = dataset_mean_std(data.train, size, cache_dir(cfg) if cache else None)
        note = (f"normalising with the training images' own mean "
                f"[{', '.join(f'{v:.4f}' for v in stats[0])}] and std "
                f"[{', '.join(f'{v:.4f}' for v in stats[1])}] (from {count} images)")
    mean_std = resolve_normalization(
        cfg.transforms, model_default=info.default_normalize,
        pretrained=bool(cfg.model.pretrained), dataset_mean_std=stats,
    )
    if cfg.transforms.normalize == "auto" and info.mean_std is not None:
        mean_std = list(info.mean_std[0]), list(info.mean_std[1])  # the weights' own (timm)
    return Preprocessing(size, mean_std, note)


def dataset_mean_std(dataset: Dataset, size: ImageSize, cache: Path | None,
                     limit: int = STATS_IMAGES) -> tuple[tuple[list[float], list[float]], int]:
    """Per-channel mean and std of ``dataset``'s images in [0, 1] at ``size`` (H x W) (a
    seeded sample of ``limit`` images when larger), and how many images they came from."""
    n = len(dataset)  # type: ignore[arg-type]
    if n > limit:
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:limit]
        dataset = Subset(dataset, sorted(pick.tolist()))
    images, _ = decode_to_tensor(dataset, size, cache_dir=cache)
    values = images.double().div_(255.0).transpose(0, 1).reshape(images.shape[1], -1)
    mean = values.mean(dim=1)
    std = values.std(dim=1, unbiased=False).clamp(min=1e-3)  # a blank channel must not divide by 0
    return (mean.tolist(), std.tolist()), len(images)


def pin_memory(cfg: Config, device: torch.device) -> bool:
    if cfg.loader.pin_memory is None:
        return device.type == "cuda"
    return cfg.loader.pin_memory


def cache_dir(cfg: Config) -> Path:
    return Path(cfg.data.root).expanduser() / ".imgcls-cache"


def decoded_bytes(cfg: Config, images: int, prep: Preprocessing) -> int:
    """Device memory the decoded uint8 images take."""
    height, width = size_hw(prep.image_size)
    return images * cfg.model.in_channels * height * width


def eval_batch_size(cfg: Config) -> int:
    return cfg.loader.eval_batch_size or 2 * cfg.loader.batch_size


# --------------------------------------------------------------------------- training


def build_train_loaders(cfg: Config, data: DataSplit, prep: Preprocessing,
                        info: runtime.DistInfo, device: torch.device) -> TrainLoaders:
    """The training loader (sharded per rank) and the validation loader (a disjoint share per
    rank, no padding repeats: the metric sums are all-reduced), of the kind ``data.loader``
    picks."""
    if data.multilabel and cfg.loader.sampler == "balanced":
        raise ImgclsError("loader.sampler=balanced draws images by their one class, and this "
                          "data has several labels per image; use optim.class_weights=auto")
    cfg = keep_a_lone_partial_batch(cfg, len(data.train), info.world_size)  # type: ignore[arg-type]
    kind = choose_loader(cfg, data, prep)
    loaders = None
    if kind == "photos":
        loaders = _photo_loaders(cfg, data, prep, info, device)
    if kind == "memory":
        train, val = _memory_loaders(cfg, data, prep, info, device)
        loaders = TrainLoaders(train, val, "memory")
    elif loaders is None:
        train_dl, val_dl = _dataloaders(cfg, data, prep, info, device)
        loaders = TrainLoaders(train_dl, val_dl, "dataloader")
    if len(loaders.train) == 0:
        raise ImgclsError(
            f"no training batches: {len(data.train)} image(s) with loader.batch_size="  # type: ignore[arg-type]
            f"{cfg.loader.batch_size} and loader.drop_last={cfg.loader.drop_last}"
        )
    return loaders


def keep_a_lone_partial_batch(cfg: Config, train_images: int, world_size: int) -> Config:
    """``loader.drop_last`` drops each epoch's last partial batch (airbench does, for equal
    steps), but not when it is the only batch: a recipe tuned for CIFAR-10's 50,000 images must
    still train on a folder of a few hundred."""
    if cfg.loader.drop_last and 0 < train_images // world_size < cfg.loader.batch_size:
        return replace(cfg, loader=replace(cfg.loader, drop_last=False))
    return cfg


def photo_side(cfg: Config, prep: Preprocessing) -> int:
    """The photo cache's shorter side: ``data.cache_side``, else the evaluation resize (of the
    longer side of the input size)."""
    return cfg.data.cache_side or round(max(size_hw(prep.image_size)) * 256 / 224)


def choose_loader(cfg: Config, data: DataSplit, prep: Preprocessing) -> LoaderKind:
    """Which loader trains: the photo loader for files trained with random resized crops
    (``auto``: when the cache fits ``data.disk_budget_mb`` and the free disk), else the memory
    loader or the DataLoader as :func:`use_memory_loader` decides."""
    if cfg.data.loader != "dataloader" and not photo_unsupported(
            cfg.transforms, prep.image_size, cfg.model.in_channels, cfg.explicit):
        estimate = estimate_bytes(data.train, photo_side(cfg, prep))
        if estimate is not None and (cfg.data.loader == "memory"
                                     or _fits_disk(cfg, estimate)):
            return "photos"
    return "memory" if use_memory_loader(cfg, data, prep) else "dataloader"


def _fits_disk(cfg: Config, nbytes: int) -> bool:
    folder = cache_dir(cfg)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    return nbytes <= min(cfg.data.disk_budget_mb * 2**20, free * 0.9)


def use_memory_loader(cfg: Config, data: DataSplit, prep: Preprocessing) -> bool:
    """``data.loader`` for training: memory, dataloader, or auto (memory when it fits and can do
    the transforms)."""
    mode = cfg.data.loader
    unsupported = unsupported_transforms(cfg.transforms, prep.image_size, cfg.model.in_channels,
                                         cfg.explicit)
    if mode == "memory" and unsupported:
        raise ImgclsError(
            f"data.loader=memory cannot apply {', '.join(unsupported)} (it does random "
            "crop, horizontal flip, cutout and normalisation only); use data.loader=dataloader "
            "or auto"
        )
    images = len(data.train) + (len(data.val) if data.val is not None else 0)  # type: ignore[arg-type]
    nbytes = decoded_bytes(cfg, images, prep)
    fits = nbytes <= cfg.data.memory_budget_mb * 2**20
    use = mode == "memory" or (mode == "auto" and not unsupported and fits)
    if cfg.transforms.flip_mode == "alternate" and not use:
        why = ("data.loader=dataloader" if mode == "dataloader" else
               f"it cannot apply {', '.join(unsupported)}" if unsupported else
               f"{nbytes / 2**20:.0f} MB of images exceed data.memory_budget_mb="
               f"{cfg.data.memory_budget_mb}")
        raise ImgclsError(
            "transforms.flip_mode=alternate needs the device-resident loader, which this run "
            f"cannot use ({why}); use transforms.flip_mode=random"
        )
    return use


def _dataloaders(cfg: Config, data: DataSplit, prep: Preprocessing, info: runtime.DistInfo,
                 device: torch.device) -> tuple[EpochLoader, EpochLoader | None]:
    train_transform = build_transform(
        cfg.transforms, train=True, image_size=prep.image_size, native_size=data.native_size,
        mean_std=prep.mean_std, in_channels=cfg.model.in_channels, explicit=cfg.explicit,
    )
    train_loader = EpochLoader(
        TransformedDataset(data.train, train_transform), cfg.loader, train=True,
        seed=cfg.train.seed, pin_memory=pin_memory(cfg, device),
        num_replicas=info.world_size, rank=info.rank, deterministic=cfg.train.deterministic,
        labels=dataset_labels(data.train) if cfg.loader.sampler == "balanced" else None,
    )
    val_loader = None
    if data.val is not None and len(data.val) > 0:  # type: ignore[arg-type]
        val_loader = eval_dataloader(cfg, shard(data.val, info.world_size, info.rank), prep,
                                     data.native_size, device)
    return train_loader, val_loader


def _memory_loaders(cfg: Config, data: DataSplit, prep: Preprocessing, info: runtime.DistInfo,
                    device: torch.device) -> tuple[MemoryLoader, MemoryLoader | None]:
    """Decode the train and val sets once (cached) and keep them on ``device``; the same
    augmentations as :func:`build_transform`, made per batch."""
    tf = apply_preset(cfg.transforms, prep.image_size, cfg.explicit)
    ld = cfg.loader
    images, labels = decode_to_tensor(data.train, prep.image_size, cache_dir=cache_dir(cfg))
    train_loader = MemoryLoader(
        images, labels, batch_size=ld.batch_size, train=True, shuffle=ld.shuffle,
        drop_last=ld.drop_last, seed=cfg.train.seed, device=device, mean_std=prep.mean_std,
        augment=Augmentation.from_transforms(tf), num_replicas=info.world_size, rank=info.rank,
        sampler=ld.sampler,
    )
    val_loader = None
    if data.val is not None and len(data.val) > 0:  # type: ignore[arg-type]
        val_loader = memory_eval_loader(cfg, data.val, prep, device, info)
    return train_loader, val_loader


def _photo_loaders(cfg: Config, data: DataSplit, prep: Preprocessing, info: runtime.DistInfo,
                   device: torch.device) -> TrainLoaders | None:
    """The photo loader on the cache (built by rank 0 first), validation decoded once with the
    evaluation's resize and crop; None when the cache cannot be written and ``data.loader=auto``
    (the DataLoader reads the files instead)."""
    side = photo_side(cfg, prep)
    estimate = estimate_bytes(data.train, side) or 0
    budget = cfg.data.memory_budget_mb * 2**20
    if info.world_size > 1 and info.rank != 0:
        runtime.barrier()  # rank 0 builds the cache; the others then open it
    try:
        store = photo_store(data.train, side, cache_dir(cfg), in_memory=estimate <= budget,
                            skip_bad=cfg.data.skip_bad_images, say=echo)
    except CacheWriteError as exc:
        if cfg.data.loader == "memory":
            raise
        echo(f"{exc}: reading the photos with a DataLoader instead")
        return None
    finally:
        if info.world_size > 1 and info.rank == 0:
            runtime.barrier()
    if store.skipped:
        echo(f"skipped {len(store.skipped)} unreadable image(s), e.g. {store.skipped[0]}")
    tf = apply_preset(cfg.transforms, prep.image_size, cfg.explicit)
    ld = cfg.loader
    train = PhotoLoader(
        store, image_size=prep.image_size, batch_size=ld.batch_size, shuffle=ld.shuffle,
        drop_last=ld.drop_last, seed=cfg.train.seed, device=device, mean_std=prep.mean_std,
        augment=PhotoAugmentation.from_transforms(tf), num_replicas=info.world_size,
        rank=info.rank, sampler=ld.sampler)
    val = None
    if data.val is not None and len(data.val) > 0:  # type: ignore[arg-type]
        val_images = len(data.val)  # type: ignore[arg-type]
        if decoded_bytes(cfg, val_images, prep) <= budget:
            val = memory_eval_loader(cfg, data.val, prep, device, info)
        else:
            val = eval_dataloader(cfg, shard(data.val, info.world_size, info.rank), prep,
                                  data.native_size, device)
    how = "memory-mapped" if store.memory_mapped else "read into memory"
    where = f"{store.folder}, {store.nbytes / 2**20:.0f} MB, {how}"
    return TrainLoaders(train, val, "photos", where)


# --------------------------------------------------------------------------- evaluation


def build_eval_loader(cfg: Config, dataset: Dataset, prep: Preprocessing,
                      native_size: int | None, device: torch.device) -> BatchLoader:
    """A loader for evaluating a checkpoint: device-resident when ``data.loader`` allows it, the
    evaluation transforms need no resizing or cropping, and the images fit the budget."""
    if _eval_fits_memory(cfg, len(dataset), prep):  # type: ignore[arg-type]
        return memory_eval_loader(cfg, dataset, prep, device)
    return eval_dataloader(cfg, dataset, prep, native_size, device)


def memory_eval_loader(cfg: Config, dataset: Dataset, prep: Preprocessing, device: torch.device,
                       info: runtime.DistInfo | None = None) -> MemoryLoader:
    """Decoded once (cached); with ``info``, a disjoint strided share per rank."""
    info = info or runtime.DistInfo()
    tf = apply_preset(cfg.transforms, prep.image_size, cfg.explicit)
    images, labels = decode_to_tensor(dataset, prep.image_size, cache_dir=cache_dir(cfg),
                                      resize=eval_resize(tf, prep.image_size))
    return MemoryLoader(
        images, labels, batch_size=eval_batch_size(cfg), train=False, seed=cfg.train.seed,
        device=device, mean_std=prep.mean_std, num_replicas=info.world_size, rank=info.rank,
    )


def eval_dataloader(cfg: Config, dataset: Dataset, prep: Preprocessing,
                    native_size: int | None, device: torch.device) -> EpochLoader:
    transform = build_transform(
        cfg.transforms, train=False, image_size=prep.image_size, native_size=native_size,
        mean_std=prep.mean_std, in_channels=cfg.model.in_channels, explicit=cfg.explicit,
    )
    return EpochLoader(
        TransformedDataset(dataset, transform), cfg.loader, train=False, seed=cfg.train.seed,
        pin_memory=pin_memory(cfg, device),
    )


def _eval_fits_memory(cfg: Config, images: int, prep: Preprocessing) -> bool:
    if cfg.data.loader == "dataloader":
        return False
    if unsupported_transforms(cfg.transforms, prep.image_size, cfg.model.in_channels,
                              cfg.explicit):
        return False
    return (cfg.data.loader == "memory"
            or decoded_bytes(cfg, images, prep) <= cfg.data.memory_budget_mb * 2**20)
