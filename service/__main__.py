"""`python -m service` is the `tandem` command."""

from service.cli import main

raise SystemExit(main())
