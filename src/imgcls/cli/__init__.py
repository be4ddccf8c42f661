"""The ``imgcls`` command line: one module per group of subcommands, ``main`` ties them."""

from imgcls.cli.main import main

__all__ = ["main"]
