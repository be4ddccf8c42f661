"""Using a trained model: a checkpoint back to a model with its evaluation preprocessing
(``load``), the one scoring path (``scoring``), ``imgcls predict`` (``predict``), ``imgcls
export`` (``export/``) and old tutorial files (``legacy/``: ``imgcls convert`` and
``--trust-pickle``)."""
