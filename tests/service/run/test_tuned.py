"""docs/configuration.md's table of tuned values says what service/run/tuned.py holds: every
entry and no other, each field in its section with its value."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from service.run.tuned import FAMILIES, TUNED

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def _kind(value: Any) -> tuple[str, Any]:
    """A value with its kind, so that a documented 1 is not taken for True."""
    return ("bool" if isinstance(value, bool) else "number" if isinstance(value, (int, float)) else "text", value)


def _value(text: str) -> Any:
    words = {"null": None, "true": True, "false": False}
    if text in words:
        return words[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _fields(entry: dict[str, Any]) -> dict[str, tuple[str, tuple[str, Any]]]:
    """An entry's fields: name -> (section: top, a2c or policy; the value with its kind)."""
    return {key: (section, _kind(value))
            for section, values in [("top", {k: v for k, v in entry.items() if not isinstance(v, dict)}),
                                    *((k, v) for k, v in entry.items() if isinstance(v, dict))]
            for key, value in values.items()}


def documented_rows() -> dict[str, dict[str, tuple[str, tuple[str, Any]]]]:
    """The table of tuned values (from its header to the next blank line or the end): env cell -> its fields
    as `_fields` gives them. A code span whose first field is `policy.<name>` holds policy fields,
    other names are A2C fields when A2CConfig has them, else top-level. A `Name: ` part of a row
    holds one env's own values, returned under that name."""
    from learner.config import A2CConfig
    rows: dict[str, dict[str, tuple[str, tuple[str, Any]]]] = {}
    lines = DOC.read_text().splitlines()
    start = lines.index("| env | tuned values | why |") + 2
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    for line in lines[start:end]:
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        assert len(cells) == 3, line
        target = rows.setdefault(cells[0], {})
        for part in cells[1].split("; "):
            named = re.match(r"(\w[\w.-]*): `", part)
            if named:
                target = rows.setdefault(named.group(1), dict(rows[cells[0]]))
            for span in re.findall(r"`([^`]*)`", part):
                in_policy = span.startswith("policy.")
                for pair in span.split(", "):
                    key, _, value = pair.partition(" ")
                    key = key.removeprefix("policy.")
                    section = "policy" if in_policy else "a2c" if key in A2CConfig.model_fields else "top"
                    target[key] = (section, _kind(_value(value)))
    return rows


def test_every_tuned_entry_is_documented_with_its_values_and_no_other():
    rows = documented_rows()
    expected, matched = {}, set()
    for env_id, entry in TUNED.items():
        cell = next((cell for cell in rows if env_id in cell.split(", ")), None)
        assert cell is not None, f"{env_id} has no row in {DOC.name}'s table of tuned values"
        own = env_id.split("-")[0]
        matched |= {cell, own}
        expected[env_id] = (rows.get(own, rows[cell]), _fields(entry))
    for family, (_, entry) in FAMILIES.items():
        cell = next((cell for cell in rows if f"`{family}` family" in cell), None)
        assert cell is not None, f"the {family} family has no row in {DOC.name}'s table of tuned values"
        matched.add(cell)
        expected[family] = (rows[cell], _fields(entry))
    assert set(rows) <= matched, f"rows for no tuned entry: {set(rows) - matched}"
    for name, (doc, code) in expected.items():
        assert doc == code, name
