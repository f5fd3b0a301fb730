"""Object storage behind one small interface: the router (``router.py``: URIs to backends),
the backend interface (``backend.py``), a local directory (``local.py``) and S3 (``s3.py``).

``Storage`` and ``join`` are what the rest of rstream uses; they are re-exported here.
"""

from rstream.shared.storage.router import Storage, join

__all__ = ["Storage", "join"]
