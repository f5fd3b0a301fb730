"""rstream's worker app with a stand-in model that costs no compute, for bench/offline_scale.py.

    celery -A bench.standin_app worker -Q infer --pool threads -c N

Everything is ``rstream.worker.app``'s (intake, fetch, decode, batching, result lines, part
writes, job records, manifests) except the forward: the eager predictor's logits are zeros of
the right shape, made without running the network. With 32x32 images and a model whose
preprocessing is resize 32 / crop 32, what is left is the pipeline's own cost per image. Use it
with ``RSTREAM_BACKEND=eager`` (ONNX Runtime would not run this forward).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rstream.worker.app import app
from rstream.worker.model.predict import Predictor

__all__ = ["app"]


def _no_forward(self: Predictor, x: Tensor) -> Tensor:
    return torch.zeros((x.shape[0], len(self.classes)), dtype=torch.float32)


Predictor._logits = _no_forward  # type: ignore[method-assign]
