"""``python -m bridge`` is ``oscc-bridge``."""

from bridge.cli import main

raise SystemExit(main())
