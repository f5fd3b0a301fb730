"""The fine-tune wing: scheduled or manual training runs that publish registry versions.

- :mod:`worker.finetune.task`: the Celery task's body: the single-flight lock, progress in
  Redis, the recorded outcome;
- :mod:`worker.finetune.run`: one run: the start model, the data, training, the promotion gate;
- :mod:`worker.finetune.loop`: the epoch loop: freezing per mode, AMP, clipping,
  out-of-memory splits, the choice of epoch;
- :mod:`worker.finetune.optimizer`: SGD groups, weight decay, the learning-rate schedule;
- :mod:`worker.finetune.evaluation`: accuracy and loss with the serving preprocessing;
- :mod:`worker.finetune.dataset`: labelled images: listing, splits, fingerprint,
  augmentation, datasets.

Serving never imports this package; the trainer process imports it on its first task.
"""
