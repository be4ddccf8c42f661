"""What a trained model does, on pages that open from the file system: ``imgcls report``.
It reads what runs wrote (:mod:`imgcls.runs.files` writes ``results.csv`` and
``curves.png``); nothing below it imports it."""
