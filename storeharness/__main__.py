"""``python -m storeharness``: the same command as ``storeharness``."""

from .harness.cli import main

raise SystemExit(main())
