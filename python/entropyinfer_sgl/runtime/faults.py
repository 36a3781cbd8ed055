"""Test-only fault injection: make EntropyInfer's planning or compression raise for chosen requests.

For tests of fault isolation only (a fault in one request's plan must fail that request and leave the server
serving the others); never set it in production. Nothing happens at import: the backend reads the variable once,
when it is constructed, and logs a warning when it is set.

    ENTROPYINFER_TEST_FAULT=plan:MARKER       # prefill planning raises for every request whose id contains MARKER
    ENTROPYINFER_TEST_FAULT=compress:MARKER   # so does a decode compression event
    ENTROPYINFER_TEST_FAULT=plan:A,compress:B # several, comma-separated
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ENV_TEST_FAULT = "ENTROPYINFER_TEST_FAULT"
FAULT_KINDS = ("plan", "compress")


class InjectedFault(RuntimeError):
    """The fault `ENTROPYINFER_TEST_FAULT` asked for."""


@dataclass(frozen=True)
class FaultInjection:
    faults: tuple[tuple[str, str], ...]  # (kind, marker): requests whose id contains marker fail at kind

    def check(self, kind: str, rid: str) -> None:
        """Raise InjectedFault when this injection targets `kind` for request `rid`."""
        for fault_kind, marker in self.faults:
            if kind == fault_kind and marker in rid:
                raise InjectedFault(f"test fault injected by {ENV_TEST_FAULT} ({kind}:{marker})")

    def describe(self) -> str:
        return ",".join(f"{kind}:{marker}" for kind, marker in self.faults)


def fault_injection_from_env() -> FaultInjection | None:
    """The injection `ENTROPYINFER_TEST_FAULT` asks for, or None; a malformed value raises ValueError."""
    text = os.environ.get(ENV_TEST_FAULT)
    if not text:
        return None
    faults = []
    for item in text.split(","):
        kind, _, marker = item.strip().partition(":")
        if kind not in FAULT_KINDS or not marker:
            raise ValueError(f"{ENV_TEST_FAULT}={text!r}: expected KIND:MARKER[,KIND:MARKER] with KIND one of "
                             f"{FAULT_KINDS} and a non-empty request id marker")
        faults.append((kind, marker))
    return FaultInjection(tuple(faults))
