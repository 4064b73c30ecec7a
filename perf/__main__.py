"""``python -m perf``: run the performance suite (see ``perf/README.md``)."""

from perf.run import main

raise SystemExit(main())
