"""The one error type for untrusted input.

Every decoder, verifier and state machine in protocol/ raises ProtocolError
(or a subclass) with a one-line reason, so the I/O shell can fail exactly
one connection or command and keep running.
"""


class ProtocolError(Exception):
    """Untrusted input was rejected; `str(err)` is a one-line reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason.replace("\n", " "))
        self.reason = reason.replace("\n", " ")


class VerificationError(ProtocolError):
    """Evidence, a signature, a chain or a policy check failed."""
