"""The HTTP API (``rstream api``): the app (``app.py``), its routes per resource (``jobs``,
``models``, ``health``), who may call it (``auth``), its errors, its metrics and the
dashboard page. Needs the ``api`` extra."""
