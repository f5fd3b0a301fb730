"""How a worker process lives: the launcher (``rstream worker``), start-up and shutdown
(``lifecycle.py``), message intake, the heartbeat, the warm-up, health probes, metrics, GPU
readings, and the sweeper."""
