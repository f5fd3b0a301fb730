"""How a chunk is scored: the engine (fetch, decode, batch, predict), the dynamic batcher,
hot reload of production versions, one chunk end to end (``chunks.py``), ``rstream score``,
and what the tasks of one process share (``state.py``)."""
