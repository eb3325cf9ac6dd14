"""`python -m exporters ...` does what `tandem export ...` does."""

from __future__ import annotations

import sys

from exporters.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
