"""Databricks notebook source format: ``# Databricks notebook source``, cells split by ``# COMMAND ----------``,
magic cells as ``# MAGIC %pip ...`` lines, and ``# DBTITLE 1,Title`` naming a cell."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

HEADER = "# Databricks notebook source"
SEPARATOR = "# COMMAND ----------"
MAGIC_PREFIX = "# MAGIC"
TITLE_PREFIX = "# DBTITLE"


class NotebookFormatError(ValueError):
    pass


@dataclass(frozen=True)
class Cell:
    index: int
    source: str              # Python source, or the magic's text without the '# MAGIC ' prefixes
    magic: Optional[str]     # 'pip', 'md', 'sql', ... or None for a Python cell
    title: Optional[str] = None

    @property
    def magic_args(self) -> str:
        """For a magic cell, the text after the ``%magic`` word."""
        first, _, rest = self.source.partition("\n")
        return (first.split(None, 1)[1] if " " in first.strip() else "") + ("\n" + rest if rest else "")


def parse(text: str, name: str = "<notebook>") -> list[Cell]:
    lines = text.splitlines()
    if not lines or lines[0].strip() != HEADER:
        raise NotebookFormatError(f"{name}: the first line must be '{HEADER}'")
    chunks: list[list[str]] = []
    current: list[str] = []
    for line in lines[1:]:
        if line.strip() == SEPARATOR:
            chunks.append(current)
            current = []
        else:
            current.append(line)
    chunks.append(current)

    cells: list[Cell] = []
    for chunk in chunks:
        title = None
        body = list(chunk)
        while body and not body[0].strip():
            body.pop(0)
        if body and body[0].startswith(TITLE_PREFIX):
            title_line = body.pop(0)
            title = title_line.split(",", 1)[1].strip() if "," in title_line else ""
        content = [line for line in body if line.strip()]
        if not content:
            continue
        if all(line.startswith(MAGIC_PREFIX) for line in content):
            magic_lines = [line[len(MAGIC_PREFIX):][1:] if line.startswith(MAGIC_PREFIX + " ") else ""
                           for line in content]
            first = magic_lines[0].strip()
            if not first.startswith("%"):
                raise NotebookFormatError(f"{name}: magic cell {len(cells)} does not start with a %command")
            cells.append(Cell(len(cells), "\n".join(magic_lines), first[1:].split()[0], title))
        else:
            cells.append(Cell(len(cells), "\n".join(body).strip("\n") + "\n", None, title))
    return cells


def load(path: Path) -> list[Cell]:
    return parse(path.read_text(encoding="utf-8"), str(path))
