"""The zmqbus performance suite: zmqbus side by side with raw pyzmq, NATS and Redis.

Run it with ``python -m perf`` (or ``python perf/run.py``); ``--quick`` for a smoke
run of a few seconds per scenario. See ``perf/README.md`` for the method.
"""

__all__ = ["__version__"]

__version__ = "1"
