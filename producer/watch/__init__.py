"""Watch mode (``rstream watch``): score every new object exactly once, in window jobs.

- ``watcher.py``: the long-running loop: open, pass after pass, close.
- ``feeds.py``: where new objects come from (a listed folder, a cursor, a stream).
- ``stream.py``: the ingest stream any client writes to (``XADD rstream:ingest:NAME``).
- ``windows.py``: window jobs: record, send, close.
- ``record.py``: a watch's state in Redis and what ``rstream status`` lists.
- ``lock.py``: one watcher per watch.
- ``metrics.py``: the watcher's Prometheus metrics.
"""
