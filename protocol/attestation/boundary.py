"""The last-resort fault boundary of every public verify/load entry point.

Why: verification parses hostile bytes with third-party libraries, and only
ProtocolError/VerificationError may leave protocol/ (the I/O shell fails one
connection on those and keeps serving). Each untrusted object is already
parsed and checked inside its own narrow `except` (certs._checked, the quote
reader, the collateral loader), which gives precise reasons. This guard is
the backstop for what those missed: any other exception becomes
`UnexpectedError`, a VerificationError that keeps the original as
`__cause__`. Peers see a one-line reason; fuzzers and tests treat an
UnexpectedError as the bug it is (bench/fuzz.py counts it as a crash).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from ..errors import ProtocolError, VerificationError

P = ParamSpec("P")
R = TypeVar("R")


class UnexpectedError(VerificationError):
    """A library or keepmesh error escaped a verifier's narrow checks (a keepmesh bug)."""


def fault_boundary(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a public entry point: declared errors pass, anything else is converted."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except ProtocolError:
                raise
            except Exception as err:
                detail = str(err).splitlines()[0][:80] if str(err) else ""
                raise UnexpectedError(
                    f"{what}: unexpected {type(err).__name__} ({detail})") from err

        return guarded

    return wrap
