"""`python -m common.secure ...`: see common/secure/cli.py."""

from common.secure.cli import main

raise SystemExit(main())
