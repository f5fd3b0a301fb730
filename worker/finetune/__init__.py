"""The fine-tune wing: scheduled or manual training runs that publish registry versions.

- :mod:`rstream.worker.finetune.task`: the Celery task's body: the single-flight lock, progress in
  Redis, the recorded outcome;
- :mod:`rstream.worker.finetune.run`: one run: the start model, the data, training, the promotion
  gate;
- :mod:`rstream.worker.finetune.loop`: the epoch loop: freezing per mode, AMP, clipping,
  out-of-memory splits, the choice of epoch;
- :mod:`rstream.worker.finetune.optimizer`: SGD groups, weight decay, the learning-rate schedule;
- :mod:`rstream.worker.finetune.evaluation`: accuracy and loss with the serving preprocessing;
- :mod:`rstream.worker.finetune.dataset`: labelled images: listing, splits, fingerprint,
  augmentation, datasets.

Serving never imports this package; the trainer process imports it on its first task.
"""
