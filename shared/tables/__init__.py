"""Tables as sources of images: CSV, JSON lines and Parquet manifests whose rows name a URI
and carry other columns into the results (``reader.py``), and how rows become a job's chunks
(``entries.py``)."""
