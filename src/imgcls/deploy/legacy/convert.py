"""``imgcls convert``: a tutorial's ``.pth`` file written as a safe imgcls checkpoint.

>>> convert("cifar_net.pth", classes=["plane", "car", ...])    # doctest: +SKIP
PosixPath('cifar_net.imgcls.pt')
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from imgcls.config.sizes import ImageSize
from imgcls.deploy.legacy.pickles import read_source
from imgcls.deploy.legacy.records import check_options, make_record
from imgcls.errors import ImgclsError

__all__ = ["convert"]

log = logging.getLogger("imgcls")


def convert(
    source: str | Path,
    output: str | Path | None = None,
    *,
    trust_pickle: bool = False,
    model: str | None = None,
    classes: Sequence[str] | None = None,
    num_classes: int | None = None,
    normalize: str = "none",
    input_size: ImageSize | None = None,
) -> Path:
    """Write ``source`` (a state_dict file, or with ``trust_pickle`` a whole-model pickle) as a
    safe imgcls checkpoint; returns its path (default: beside ``source``, ``NAME.imgcls.pt``).

    ``model`` names the architecture when it cannot be recognised (torchvision models always);
    ``classes`` are the class names in label order (default ``"0".."N-1"``); ``normalize`` is
    the normalisation the model was trained with (``none``, ``half``, ``imagenet``, ``cifar10``,
    ``cifar100``). Raises ImgclsError when the file is not a model, does not fit ``model``, or is
    a pickle and ``trust_pickle`` is off (then nothing in it runs).

    >>> convert("cifar_net.pth", normalize="cifar10", classes=CIFAR10_CLASSES)  # doctest: +SKIP
    PosixPath('cifar_net.imgcls.pt')
    """
    source = Path(source)
    out = Path(output) if output is not None else source.with_name(source.stem + ".imgcls.pt")
    check_options(classes, num_classes, normalize, input_size)
    state, hint = read_source(source, trust_pickle)
    if out.resolve() == source.resolve():
        raise ImgclsError(f"convert: --output {out} is the source file itself; choose another")
    record = make_record(
        state, hint, source=source, model=model, classes=classes, num_classes=num_classes,
        normalize=normalize, input_size=input_size,
    )
    try:
        record.save(out)
    except OSError as exc:
        raise ImgclsError(f"convert: cannot write {out}: {exc.strerror or exc}") from None
    log.info("converted %s (%s, %d classes) to %s", source, record.config["model"]["name"],
             len(record.classes), out)
    return out
