"""Datasets: CIFAR-10/100, folders of class folders and list files, with reproducible splits."""

from imgcls.data.folder import IMAGE_EXTENSIONS, ImageFileDataset, load_rgb
from imgcls.data.sources import DataSplit, create_datasets, create_eval_dataset, from_dataset
from imgcls.data.splits import LabeledSubset, load_split, save_split, stratified_split

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataSplit",
    "ImageFileDataset",
    "LabeledSubset",
    "create_datasets",
    "create_eval_dataset",
    "from_dataset",
    "load_rgb",
    "load_split",
    "save_split",
    "stratified_split",
]
