"""Allow ``python -m p2pupdate``."""

from p2pupdate.cli import main

raise SystemExit(main())
