"""``python -m bench``: every benchmark, one table (see :mod:`bench.run`)."""

from bench.run import main

raise SystemExit(main())
