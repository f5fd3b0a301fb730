"""The queue between the two sides: the Celery app factory (``app.py``), the task messages
(``messages.py``), publishing them (``publish.py``), what the queues hold (``inspect.py``,
``metrics.py``), the dead letters, the worker heartbeats and the beat schedule. No torch."""
