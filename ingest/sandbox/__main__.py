"""``python -m ingest.sandbox``: see :mod:`ingest.sandbox.cli`."""

from .cli import main

raise SystemExit(main())
