"""The consumer side of rstream; the only package that imports torch and torchvision."""
