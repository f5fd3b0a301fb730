"""Jobs, from the first chunk sent to the manifest; no torch.

- ``record.py``: what a job record says (:class:`Job`, its statuses, new job ids).
- ``store.py``: the record in Redis, every update one atomic call, counted once per chunk.
- ``inputs.py``: the input record in storage: each chunk's URIs, as first listed.
- ``sender.py``: how a chunk message leaves (backpressure, counted, published).
- ``resend.py``: which chunks still need a message, and sending them again.
- ``results.py``: result lines and parts; ``manifest.py``: the manifest.
- ``finish.py``: the end of a job.
"""
