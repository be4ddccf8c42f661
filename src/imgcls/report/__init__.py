"""What a trained model does, on pages that open from the file system: ``imgcls report``.

Kept import-light on purpose: the training callback that refreshes ``results.csv`` and
``curves.png`` imports :mod:`imgcls.report.curves` every run, and should not pay for the rest.
"""
