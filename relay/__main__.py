"""`python -m relay` is `dogstatsd-relay`."""

from relay.cli import main

raise SystemExit(main())
