"""What a model is: loading and saving (``loader.py``), checkpoints from outside, the
preprocessing recipe, batched prediction, the ONNX Runtime backend, export, and the device."""
