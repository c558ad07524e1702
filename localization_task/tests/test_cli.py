"""The config-dataclass-to-flags mechanism shared by the entry points."""
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from localization_task.common import cli


@dataclass
class _Config:
    source: Path = cli.required("where to read")
    mode: Literal["fast", "exact"] = cli.arg("fast", "how to work")
    names: tuple[str, ...] = cli.arg(("a", "b"), "names to keep")
    roots: list[str] = cli.arg([], "folders", action="extend")
    limit: float | None = cli.arg(None, "upper bound, 50 % by default")
    verbose: bool = cli.arg(False, "say more")

    def __post_init__(self):
        cli.check_choices(self)
        if self.limit is not None and self.limit < 0:
            raise ValueError("--limit must not be negative.")


def test_flags_follow_the_field_types():
    config = cli.parse(_Config, "test", ["--source", "x", "--mode", "exact", "--names", "c", "d",
                                         "--roots", "r1", "--roots", "r2", "r3", "--limit", "0.5", "--verbose"])
    assert config == _Config(Path("x"), "exact", ["c", "d"], ["r1", "r2", "r3"], 0.5, True)
    assert cli.parse(_Config, "test", ["--source", "x"]) == _Config(Path("x"))


def test_mutable_defaults_are_not_shared():
    first, second = _Config(Path("x")), _Config(Path("y"))
    first.roots.append("z")
    assert second.roots == []


@pytest.mark.parametrize("argv", [[], ["--source", "x", "--mode", "slow"], ["--source", "x", "--names"]])
def test_argparse_refuses_missing_required_flags_and_bad_choices(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse(_Config, "test", argv)
    assert exit_info.value.code == 2 and "usage:" in capsys.readouterr().err


def test_a_bad_value_is_one_sentence_and_none(capsys):
    assert cli.parse(_Config, "test", ["--source", "x", "--limit", "-1"]) is None
    assert capsys.readouterr().err == "error: --limit must not be negative.\n"


def test_literal_fields_are_checked_in_code_too():
    with pytest.raises(ValueError, match="--mode must be one of fast, exact"):
        _Config(Path("x"), mode="slow")


def test_help_shows_defaults_and_the_epilog(capsys):
    with pytest.raises(SystemExit):
        cli.parse(_Config, "test", ["--help"], epilog="see also: the manual")
    text = " ".join(capsys.readouterr().out.split())
    assert "names to keep (default: a b)" in text and "50 % by default" in text
    assert "(default: None)" not in text and text.endswith("see also: the manual")
