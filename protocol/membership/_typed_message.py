"""`wire.message` as mypy should see it.

Why: wire.message builds frozen dataclasses at runtime, but without
`typing.dataclass_transform` mypy sees no fields, so keyword construction of
records fails type checking. Until wire.py gains the decorator (reported to
the lead), this module gives mypy the right signature and changes nothing at
runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from ..wire import Message

if TYPE_CHECKING:
    from typing import dataclass_transform

    _M = TypeVar("_M", bound=Message)

    @dataclass_transform(frozen_default=True)
    def message(cls: type[_M]) -> type[_M]: ...
else:
    from ..wire import message

__all__ = ["message"]
