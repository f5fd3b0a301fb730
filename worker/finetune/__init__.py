"""The fine-tune wing: scheduled or manual training runs that publish registry versions.

- :mod:`worker.finetune.task`: the Celery task's body: the single-flight lock, progress in
  Redis, the recorded outcome;
- :mod:`worker.finetune.run`: one run: the start model, the data, training, the promotion gate;
- :mod:`worker.finetune.loop`: the epoch loop: freezing per mode, optimizer groups, AMP;
- :mod:`worker.finetune.evaluation`: accuracy and loss with the serving preprocessing;
- :mod:`worker.finetune.dataset`: labelled images: listing, split, fingerprint, datasets.

Serving never imports this package; the trainer process imports it on its first task.
"""
