"""``python -m polyviz.metrics [--markdown] [--readme README.md]``: the metrics table
(:func:`polyviz.metrics.info.markdown_table`), printed or rewritten in a README."""

from polyviz.metrics.info import _main

raise SystemExit(_main())
