"""One printed line per check and the closing `N passed, M failed` summary."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


class StepFailed(Exception):
    """A check failed and the ones after it cannot run; teardown still happens."""


@dataclass
class Report:
    """The checks run so far, printed as they finish."""

    passed: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """Record and print one check; returns `ok`."""
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            self.failures.append(name)
        line = f"{'PASS' if ok else 'FAIL'}  {name}" + (f": {detail}" if detail else "")
        print(line, flush=True)
        return ok

    def require(self, name: str, ok: bool, detail: str = "") -> None:
        """Like check(), but a failure stops the steps that depend on it."""
        if not self.check(name, ok, detail):
            raise StepFailed(name)

    def note(self, text: str) -> None:
        """A progress line that is not a check."""
        print(f"  ... {text}", file=sys.stderr, flush=True)

    def summary(self) -> str:
        """`N passed, M failed`."""
        return f"{self.passed} passed, {self.failed} failed"
