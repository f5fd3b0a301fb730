"""``python -m rstream.producer.cli``: the ``rstream`` command without its console script."""

import sys

from rstream.producer.cli import main

sys.exit(main())
