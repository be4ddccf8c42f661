"""Model files saved the tutorials' way, turned into imgcls checkpoints.

The tutorials save a model in one of two ways:

* ``torch.save(model.state_dict(), "x.pth")``: a plain dict of tensors. Safe to read
  (``weights_only=True``) but it carries no class names, input size or normalisation, and not even
  the architecture: that is recognised from the key names and tensor shapes.
* ``torch.save(model, "x.pth")``: a whole-model pickle. Loading it imports the model's class and
  can run any code the file holds, so imgcls reads it only with ``trust_pickle=True``
  (``--trust-pickle``). The tutorials' classes live in the user's own scripts
  (``__main__.CIFAR10_Net_Simple_v3``, ``util.CIFAR10_Net_Simple_v3.CIFAR10_Net_Simple_v3``), which
  cannot be imported here; imgcls's seed CNNs have the same attribute layout, so those class names
  are mapped onto them.

Either way the result is an ordinary imgcls checkpoint (weights, config, classes, input size,
normalisation) that ``imgcls evaluate``, ``predict`` and ``export`` read with
``weights_only=True``. It holds no optimiser state, so it cannot be resumed; start a new run from
its weights with ``model.pretrained=FILE`` instead.

The package front: ``pickles.py`` reads the old files, ``records.py`` recognises the
architecture and makes the checkpoint record, ``convert.py`` is ``imgcls convert`` and
``load.py`` the ``--trust-pickle`` load path (:func:`read_any_checkpoint`).

>>> convert("cifar_net.pth", classes=["plane", "car", ...])    # doctest: +SKIP
PosixPath('cifar_net.imgcls.pt')
"""

from __future__ import annotations

from imgcls.deploy.legacy.convert import convert
from imgcls.deploy.legacy.load import read_any_checkpoint
from imgcls.deploy.legacy.pickles import TUTORIAL_CLASSES
from imgcls.deploy.legacy.records import NORMALIZE_CHOICES

__all__ = ["NORMALIZE_CHOICES", "TUTORIAL_CLASSES", "convert", "read_any_checkpoint"]
