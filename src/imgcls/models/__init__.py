"""Model zoo: imgcls's seed CNNs plus every torchvision classifier (and, with the ``[timm]``
extra, every timm model as ``timm/NAME``: ``timm_models.py``), built from ``ModelConfig``.

The package front: the names below are re-exported from ``factory.py`` (the one registry
lookup: info, creation, parameter counts), ``pretrained.py`` (local weight files) and
``finetune.py`` (heads, freezing, train mode).

>>> from imgcls.config import ModelConfig
>>> model = create_model(ModelConfig(name="lenet"), num_classes=10)
>>> get_model_info("resnet18").input_size
224

``model.pretrained``: ``""`` random init; ``"default"`` or a weights name (``IMAGENET1K_V1``)
for torchvision models (downloaded by torchvision), ``"default"`` or a pretrained tag for timm's
(from the Hugging Face Hub); or a local ``torch.save``-d state_dict or ``.safetensors`` file (any
model), loaded by :func:`load_pretrained_file` (``model.strict_load``).

Fine-tuning options (the seeds' recipes):

* ``model.head``: ``replace`` the last classifier layer with a ``num_classes`` one, or
  ``append`` ``Linear(1000, num_classes)`` after the kept 1000-way layer (seed 001's
  ``vgg.classifier.add_module('add_linear', ...)``; imgcls's CNNs keep their 10-way CIFAR layer
  and append ``Linear(10, num_classes)``). :func:`find_head` then finds the appended layer: it
  alone is the head for ``freeze`` and ``optim.head_lr_mult``.
* ``model.freeze``: ``none``, ``backbone`` (train the head only) or ``N`` (freeze the first N
  stages, :func:`backbone_stages`), or a list of parameter-name patterns (``[conv, 'fc1.*']``,
  :func:`freeze_matching`); frozen BatchNorm stays in eval mode (:func:`set_train_mode`).
* ``model.head_pool``: ``avg`` / ``max`` global pooling in front of the classifier, for models
  with a global ``avgpool`` layer (:func:`~imgcls.models.torchvision_models.set_global_pool`).
"""

from __future__ import annotations

from imgcls.models.factory import (
    HEAD_POOLS,
    HEADS,
    ModelInfo,
    count_parameters,
    create_model,
    get_model_info,
    list_models,
    model_names,
)
from imgcls.models.finetune import (
    FrozenParams,
    Stage,
    apply_freeze,
    backbone_stages,
    freeze_matching,
    head_parameters,
    set_train_mode,
)
from imgcls.models.pretrained import (
    STATE_DICT_KEYS,
    LoadReport,
    extract_state_dict,
    load_pretrained_file,
)
from imgcls.models.torchvision_models import find_head
from imgcls.registry import MODELS

__all__ = [
    "HEADS",
    "HEAD_POOLS",
    "MODELS",
    "FrozenParams",
    "LoadReport",
    "ModelInfo",
    "Stage",
    "apply_freeze",
    "backbone_stages",
    "count_parameters",
    "STATE_DICT_KEYS",
    "create_model",
    "extract_state_dict",
    "find_head",
    "freeze_matching",
    "get_model_info",
    "head_parameters",
    "list_models",
    "load_pretrained_file",
    "model_names",
    "set_train_mode",
]
