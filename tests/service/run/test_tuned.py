"""docs/configuration.md's table of tuned values says what service/run/tuned.py holds: every
entry, and each field with its value."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from service.run.tuned import FAMILIES, TUNED

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


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


def _leaves(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry's fields by their own name (A2C, policy and top-level names do not overlap)."""
    out: dict[str, Any] = {}
    for key, value in entry.items():
        out.update(_leaves(value) if isinstance(value, dict) else {key: value})
    return out


def documented_rows() -> dict[str, dict[str, Any]]:
    """env cell -> its documented fields; a `Name: ` part of a row holds one env's own values,
    which are returned under that name."""
    rows: dict[str, dict[str, Any]] = {}
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        if len(cells) != 3 or cells[0] in ("env", "---") or "`" not in cells[1]:
            continue
        target = rows.setdefault(cells[0], {})
        for part in cells[1].split("; "):
            named = re.match(r"(\w[\w.-]*): `", part)
            if named:
                target = rows.setdefault(named.group(1), dict(rows[cells[0]]))
            for span in re.findall(r"`([^`]*)`", part):
                for pair in span.split(", "):
                    key, _, value = pair.partition(" ")
                    target[key.removeprefix("policy.")] = _value(value)
    return rows


def test_every_tuned_entry_is_documented_with_its_values():
    rows = documented_rows()
    expected = {}
    for env_id, entry in TUNED.items():
        cell = next((cell for cell in rows if env_id in cell.split(", ")), None)
        assert cell is not None, f"{env_id} has no row in {DOC.name}'s table of tuned values"
        name = env_id.split("-")[0]
        expected[env_id] = (rows.get(name, rows[cell]), _leaves(entry))
    for family, (_, entry) in FAMILIES.items():
        cell = next((cell for cell in rows if f"`{family}` family" in cell), None)
        assert cell is not None, f"the {family} family has no row in {DOC.name}'s table of tuned values"
        expected[family] = (rows[cell], _leaves(entry))
    for name, (doc, code) in expected.items():
        assert doc == code, name
