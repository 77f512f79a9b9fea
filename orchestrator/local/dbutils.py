"""A local ``dbutils``: the parts the orchestrator notebooks use, with Databricks' behaviour.

* ``widgets``: ``text``/``dropdown`` declare a widget whose value is the job parameter of that name if given,
  else the default; ``get`` of an undeclared name without a parameter fails like Databricks does.
* ``secrets.get(scope, key)``: the environment variable ``MLOPS_SECRET_<SCOPE>__<KEY>`` (upper case, other
  characters as ``_``), else the same name in the git-ignored ``.secrets.env`` file. Values are never printed.
* ``notebook.exit(value)`` ends the notebook with ``value``; ``notebook.run(path, timeout, args)`` runs another
  notebook (relative to the current one) and returns its exit value.
* ``library.restartPython()`` forgets the notebook's state and re-reads installed packages.
* ``jobs.taskValues.set(key, value)`` records a value for later tasks of the job (``{{tasks.<task>.values.<key>}}``);
  values must be JSON-serializable, as on Databricks.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence


class NotebookExit(Exception):
    """Raised by ``dbutils.notebook.exit`` to end the notebook with a value."""

    def __init__(self, value: str):
        super().__init__("notebook exited")
        self.value = value


class RestartPython(Exception):
    """Raised by ``dbutils.library.restartPython`` so the kernel resets the notebook's state."""


class InputWidgetNotDefined(Exception):
    pass


class SecretNotFound(Exception):
    pass


def secret_variable(scope: str, key: str) -> str:
    # A literal: the kernel runs before the wheels (and the registry, orchestrator.environment) are installed.
    return "MLOPS_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", f"{scope}__{key}").upper()


class Widgets:
    def __init__(self, params: Mapping[str, str]):
        self._params = dict(params)
        self._declared: dict[str, str] = {}

    def text(self, name: str, defaultValue: str = "", label: Optional[str] = None) -> None:
        self._declared[name] = self._params.get(name, defaultValue)

    def dropdown(self, name: str, defaultValue: str, choices: Sequence[str], label: Optional[str] = None) -> None:
        if defaultValue not in choices:
            raise ValueError(f"widget {name}: default '{defaultValue}' is not one of its choices {list(choices)}")
        self._declared[name] = self._params.get(name, defaultValue)

    def get(self, name: str) -> str:
        if name in self._params:
            return self._params[name]
        if name in self._declared:
            return self._declared[name]
        raise InputWidgetNotDefined(f"No input widget named {name} is defined")

    def removeAll(self) -> None:
        self._declared.clear()


class Secrets:
    def __init__(self, secrets_file: Optional[Path]):
        self._file = secrets_file

    def _from_file(self) -> dict[str, str]:
        if not self._file or not self._file.exists():
            return {}
        values = {}
        for line in self._file.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#") and "=" in line:
                name, _, value = line.partition("=")
                values[name.strip()] = value.strip()
        return values

    def get(self, scope: str, key: str) -> str:
        name = secret_variable(scope, key)
        value = os.environ.get(name) or self._from_file().get(name)
        if not value:
            raise SecretNotFound(f"Secret does not exist with scope: {scope} and key: {key} "
                                 f"(locally: set {name} or add it to .secrets.env)")
        return value


class Notebook:
    def __init__(self, run_notebook: Callable[[str, int, Mapping[str, str]], str]):
        self._run = run_notebook

    def exit(self, value: str) -> None:
        raise NotebookExit(str(value))

    def run(self, path: str, timeout_seconds: int = 0, arguments: Optional[Mapping[str, str]] = None) -> str:
        return self._run(path, timeout_seconds, dict(arguments or {}))


class Library:
    def restartPython(self) -> None:
        raise RestartPython()


class TaskValues:
    def __init__(self):
        self.values: dict[str, object] = {}

    def set(self, key: str, value: object) -> None:
        import json

        json.dumps(value)  # Databricks refuses what it cannot serialize
        self.values[key] = value

    def get(self, taskKey: str, key: str, default: object = None, debugValue: object = None) -> object:
        return self.values.get(key, default) if taskKey is None else debugValue


class Jobs:
    def __init__(self):
        self.taskValues = TaskValues()


class LocalDbutils:
    def __init__(self, params: Mapping[str, str], run_notebook, secrets_file: Optional[Path] = None):
        self.jobs = Jobs()
        self.widgets = Widgets(params)
        self.secrets = Secrets(secrets_file)
        self.notebook = Notebook(run_notebook)
        self.library = Library()
