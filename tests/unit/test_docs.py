"""The README stays true to the code."""

from __future__ import annotations

from pathlib import Path

from nimbus.config import documented_variables

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme_table():
    for name, default, _ in documented_variables():
        row = next((line for line in README.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"{name} is missing from the README's configuration table"
        assert (f"`{default}`" if default else "(empty)") in row, f"{name}'s default differs"


def test_readme_names_the_two_commands():
    assert "make run" in README and "make test" in README
