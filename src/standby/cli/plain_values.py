"""Spare ``standby`` typer's pydantic coercion of values that need none.

typer 0.29 coerces the value of every parameter but a flag through a pydantic ``TypeAdapter``
that it builds on the parameter's first use, an absent option's ``None`` included. Importing
pydantic for that and building the adapters costs each command 150 to 200 ms: more than half of
``standby sync`` on a small tree, and all of it for strings typer turns into the same strings.

:func:`install` gives typer's parameters a coercion that returns at once what typer's would
return unchanged (``None`` for a single-valued parameter; a ``str`` for a ``str`` parameter
without a ``parser``) and hands everything else (numbers, choices, paths, lists) to typer's own.
It relies on one private method, ``typer.core._TyperParameter.get_runtime_param``; a typer
without it keeps its own coercion for every value, which is slower but correct, and
``tests/cli/test_cli.py`` notices (it checks that ``standby sync`` does not import pydantic).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from typer import core

_installed = False


class _PlainValues:
    """A parameter's coercion: plain values as they are, anything else as typer coerces it."""

    __slots__ = ("_param", "_typer")

    def __init__(self, param: Any, typer_coercion: Callable[[Any], Any]) -> None:
        self._param = param
        self._typer = typer_coercion

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        if _is_plain(value, param):
            return value
        return self._typer(self._param).coerce(value, param=param, ctx=ctx)


def _is_plain(value: Any, param: Any) -> bool:
    if getattr(param, "multiple", True) or getattr(param, "nargs", -1) != 1:
        return False  # typer makes None an empty tuple, and checks the items
    if value is None:
        return True
    descriptor = getattr(param, "type_descriptor", None)
    info = getattr(descriptor, "parameter_info", None)
    return (isinstance(value, str) and getattr(descriptor, "annotation", None) is str
            and info is not None and getattr(info, "parser", True) is None)


def install() -> None:
    """Make typer's parameters pass plain values through (once per process)."""
    global _installed
    parameter = getattr(core, "_TyperParameter", None)
    typer_coercion = getattr(parameter, "get_runtime_param", None)
    if _installed or parameter is None or not callable(typer_coercion):
        return

    def get_runtime_param(param: Any) -> _PlainValues:
        return _PlainValues(param, typer_coercion)

    parameter.get_runtime_param = get_runtime_param
    _installed = True
