"""Fine-tuning as the submission side sees it, without torch: a run's options and presets
(``config.py``), and runs in Redis: the single-flight lock, progress, outcomes (``runs.py``)."""
