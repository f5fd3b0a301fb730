"""Models as both sides see them, without torch: the grammar of a model reference
(``refs.py``: ``NAME``, ``NAME@VERSION``, ``torchvision:...``, ``random:...``) and the
registry's layout in storage (``registry.py``: versions, their meta, the production pointer)."""
