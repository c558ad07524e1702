"""Command-line plumbing: one config dataclass per script becomes its argparse parser.

Each field declared with `arg(default, help)` (or `required(help)`) is a flag
`--NAME`. The type hint picks the parsing: `bool` -> `--NAME/--no-NAME`,
`Literal[...]` -> those choices, `list[T]` / `tuple[T, ...]` -> one or more
values of type T; other keyword arguments (nargs, metavar, action, type) go
to argparse unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from typing import Any, Literal


def arg(default: Any, help: str, **flag: Any) -> Any:
    """A dataclass field that is also the command-line flag `--NAME` with this help."""
    metadata = {"help": help, "flag": flag}
    if isinstance(default, (list, dict, set)):  # a mutable default needs a factory
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def required(help: str, **flag: Any) -> Any:
    """A dataclass field without a default: the flag `--NAME` must be given."""
    return dataclasses.field(metadata={"help": help, "flag": flag})


def _base_type(hint: Any) -> Any:
    """`X` for `X | None`, else the hint itself."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _flag_kwargs(field: dataclasses.Field, hint: Any) -> dict:
    kwargs = _value_kwargs(_base_type(hint))
    help = field.metadata["help"]
    if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        kwargs["default"] = default
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        if shown not in (None, "") and not isinstance(default, bool):  # argparse shows a bool's itself
            help += f" (default: {shown})"
    kwargs["help"] = help.replace("%", "%%")  # argparse formats help strings with %
    return {**kwargs, **field.metadata["flag"]}


def _value_kwargs(base: Any) -> dict:
    origin = typing.get_origin(base)
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"choices": typing.get_args(base), "type": str}
    if origin in (list, tuple):
        return {"nargs": "+", "type": typing.get_args(base)[0]}
    return {"type": base}


def build_parser(cls: type, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.init:
            parser.add_argument(f"--{field.name}", **_flag_kwargs(field, hints[field.name]))
    return parser


def parse(cls: type, description: str, argv: list[str] | None, epilog: str | None = None,
          demo_defaults: dict | None = None):
    """Parse `argv` into `cls`; a bad value prints one sentence and returns None.

    Flags argparse cannot read (an unknown flag, a value outside the choices)
    end the program with its usage message and exit status 2. With `--demo` in
    argv, `demo_defaults` replace the defaults; flags given explicitly still win.
    """
    parser = build_parser(cls, description, epilog)
    if demo_defaults and "--demo" in (sys.argv[1:] if argv is None else argv):
        parser.set_defaults(**demo_defaults)
    namespace = parser.parse_args(argv)
    try:
        return cls(**vars(namespace))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return None


def check_choices(config: Any) -> None:
    """Raise ValueError when a `Literal[...]` field holds a value outside its choices.

    argparse already checks the command line; this covers configs built in code.
    """
    for name, hint in typing.get_type_hints(type(config)).items():
        base = _base_type(hint)
        value = getattr(config, name)
        optional_none = value is None and base is not hint
        if typing.get_origin(base) is Literal and value not in typing.get_args(base) and not optional_none:
            raise ValueError(f"--{name} must be one of {', '.join(map(str, typing.get_args(base)))}.")
