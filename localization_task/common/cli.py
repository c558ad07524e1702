"""Command-line plumbing: one config dataclass per script becomes its argparse parser.

Each field declared with `arg(default, help)` (or `required(help)`, or
`arg(REQUIRED, help)`) is a flag `--NAME`. The type hint picks the parsing:
`bool` -> `--NAME/--no-NAME`, `Literal[...]` -> those choices, `list[T]` /
`tuple[T, ...]` -> one or more values of type T. `flag` spells the flag other
than the field (`--json` for `json_path`); `const` is the value of a flag given
without one (`--resume` alone); other keywords (nargs, metavar, action, type)
go to argparse unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import types
import typing
from typing import Any, Literal

REQUIRED = dataclasses.MISSING  # as a default: the field has none, and the flag must be given


def arg(default: Any, help: str, flag: str | None = None, **argparse_kwargs: Any) -> Any:
    """A dataclass field that is also the command-line flag `--NAME` (or `--FLAG`) with this help."""
    metadata = {"help": help, "flag": flag, "argparse": argparse_kwargs}
    if isinstance(default, (list, dict, set)):  # a mutable default needs a factory
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def required(help: str, flag: str | None = None, **argparse_kwargs: Any) -> Any:
    """A dataclass field without a default: the flag must be given."""
    return arg(REQUIRED, help, flag, **argparse_kwargs)


def _flag_name(field: dataclasses.Field) -> str:
    return "--" + (field.metadata.get("flag") or field.name)


def _base_type(hint: Any) -> Any:
    """`X` for `X | None`, else the hint itself."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _value_kwargs(base: Any) -> dict:
    origin = typing.get_origin(base)
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"choices": typing.get_args(base), "type": str}
    if origin in (list, tuple):
        return {"nargs": "+", "type": typing.get_args(base)[0]}
    return {"type": base}


def _help(field: dataclasses.Field, default: Any) -> str:
    """The field's help with its default, unless the help states it or argparse shows it (a bool)."""
    help = field.metadata["help"]
    states_default = "default:" in help or "by default" in help
    if default is REQUIRED:
        help += " (required)"
    elif not states_default and not isinstance(default, bool):
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        if shown != "":
            help += f" (default: {shown})"
    return help.replace("%", "%%")  # argparse formats help strings with %


def _flag_kwargs(field: dataclasses.Field, hint: Any) -> dict:
    kwargs = {**_value_kwargs(_base_type(hint)), "dest": field.name}
    if field.default is REQUIRED and field.default_factory is dataclasses.MISSING:
        default = REQUIRED
        kwargs["required"] = True
    else:
        default = field.default if field.default is not REQUIRED else field.default_factory()
        kwargs["default"] = default
    kwargs["help"] = _help(field, default)
    extra = field.metadata.get("argparse", {})
    if "const" in extra and "nargs" not in extra:
        kwargs["nargs"] = "?"  # the flag alone means `const`
    return {**kwargs, **extra}


def build_parser(cls: type, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.init:
            parser.add_argument(_flag_name(field), **_flag_kwargs(field, hints[field.name]))
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


def given_fields(cls: type, argv: list[str]) -> set[str]:
    """The fields of `cls` whose flags `argv` sets explicitly, whatever the value (defaults left out)."""
    parser = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.init:
            kwargs = _flag_kwargs(field, hints[field.name])
            parser.add_argument(_flag_name(field), **{k: v for k, v in kwargs.items()
                                                       if k not in ("default", "required")})
    namespace, _ = parser.parse_known_args(argv)
    return set(vars(namespace))


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


def available_loggers() -> list[str]:
    """The Trainer's `report_to`: TensorBoard-compatible logs only when tensorboard is installed."""
    return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
