"""A job's images in the API: the gallery of its result lines and small thumbnails of its own
inputs (``routes.py``)."""
