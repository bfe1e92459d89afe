"""`python -m flowdc` is the same as the `flowdc` command."""

from flowdc.cli import main

raise SystemExit(main())
