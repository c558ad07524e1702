"""Command-line plumbing: one config dataclass per script becomes its argparse parser."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import types
import typing
from typing import Any, Literal

REQUIRED = dataclasses.MISSING  # as a default: the field has none, and the flag must be given


def arg(default: Any, help: str, const: Any = None, flag: str | None = None) -> Any:
    """A dataclass field that is also a command-line flag `--NAME` with this help.

    `default=REQUIRED` makes the flag mandatory; `flag` spells it other than the
    field name (`--json` for `json_path`); `const` is the value of the flag given
    without one.
    """
    return dataclasses.field(default=default, metadata={"help": help, "const": const, "flag": flag})


def _flag_kwargs(field: dataclasses.Field, hint: Any) -> dict:
    required = field.default is REQUIRED
    note = "required" if required else f"default: {field.default}"
    # argparse %-formats help texts: a literal % must be doubled.
    kwargs = {"help": f"{field.metadata['help']} ({note})".replace("%", "%%"), "dest": field.name}
    if required:
        kwargs["required"] = True
    else:
        kwargs["default"] = field.default
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint
    if base is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(base) is Literal:
        kwargs.update(choices=typing.get_args(base), type=str)
    elif typing.get_origin(base) is list:  # `--files a.csv b.csv`
        kwargs.update(nargs="+", type=typing.get_args(base)[0])
    else:
        kwargs["type"] = base
    if field.metadata.get("const") is not None:
        kwargs.update(nargs="?", const=field.metadata["const"])
    return kwargs


def build_parser(cls: type, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        flag = field.metadata.get("flag") or field.name
        parser.add_argument(f"--{flag}", **_flag_kwargs(field, hints[field.name]))
    return parser


def parse(cls: type, description: str, argv: list[str], demo_defaults: dict | None = None):
    """Parse `argv` into `cls`; a bad value prints one sentence and returns None.

    With `--demo` in argv, `demo_defaults` replace the defaults; flags given
    explicitly still win.
    """
    parser = build_parser(cls, description)
    if demo_defaults and "--demo" in argv:
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
        kwargs = {k: v for k, v in _flag_kwargs(field, hints[field.name]).items() if k not in ("default", "required")}
        parser.add_argument(f"--{field.metadata.get('flag') or field.name}", **kwargs)
    namespace, _ = parser.parse_known_args(argv)
    return set(vars(namespace))


def available_loggers() -> list[str]:
    """TensorBoard-compatible logs only when tensorboard is installed."""
    return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
