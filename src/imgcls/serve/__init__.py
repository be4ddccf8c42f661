"""``imgcls serve``: a checkpoint behind HTTP (FastAPI): ``/predict`` answers as
``imgcls predict --json`` does, concurrent requests batched together (``batcher``)."""
