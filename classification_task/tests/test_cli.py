"""Config dataclasses as command lines: types, choices, other spellings, required flags, bad values."""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from classification_task.common import cli


@dataclass
class Config:
    labels: Path = cli.arg(cli.REQUIRED, "a labels CSV")
    json_path: Path | None = cli.arg(None, "where the JSON goes", flag="json")
    rate: float = cli.arg(0.5, "a fraction, 0-100 %")
    mode: Literal["a", "b"] = cli.arg("a", "one of two modes")
    overwrite: bool = cli.arg(False, "replace what is there")
    resume: str | None = cli.arg(None, "a checkpoint, or 'latest' when given alone", const="latest")

    def __post_init__(self) -> None:
        if not 0 <= self.rate <= 1:
            raise ValueError("--rate must lie in [0, 1].")


def test_flags_parse_into_the_dataclass():
    config = cli.parse(Config, "test", ["--labels", "l.csv", "--json", "m.json", "--rate", "0.25", "--mode", "b",
                                        "--overwrite", "--resume"])
    assert config == Config(Path("l.csv"), Path("m.json"), 0.25, "b", True, "latest")
    assert cli.parse(Config, "test", ["--labels", "l.csv"]) == Config(Path("l.csv"))


def test_a_required_flag_missing_or_a_bad_choice_exits_2(capsys):
    for argv in ([], ["--labels", "l.csv", "--mode", "c"], ["--labels", "l.csv", "--json_path", "m.json"]):
        with pytest.raises(SystemExit) as stop:
            cli.parse(Config, "test", argv)
        assert stop.value.code == 2
    assert "--labels" in capsys.readouterr().err


def test_a_bad_value_is_one_sentence(capsys):
    assert cli.parse(Config, "test", ["--labels", "l.csv", "--rate", "2"]) is None
    assert capsys.readouterr().err == "error: --rate must lie in [0, 1].\n"


def test_help_lists_each_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.parse(Config, "test", ["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--json JSON_PATH where the JSON goes (default: None)" in help_text
    assert "a labels CSV (required)" in help_text and "0-100 % (default: 0.5)" in help_text


def test_given_fields_are_the_flags_on_the_command_line_even_at_their_default():
    argv = ["--labels", "l.csv", "--json", "m.json", "--rate", "0.5", "--no-overwrite", "--resume"]
    assert cli.given_fields(Config, argv) == {"labels", "json_path", "rate", "overwrite", "resume"}
    assert cli.given_fields(Config, ["--mode", "b"]) == {"mode"}
    assert cli.given_fields(Config, []) == set()
