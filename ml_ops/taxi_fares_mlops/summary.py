"""What a job run reports: one ``StageResult`` per stage and one ``JobSummary`` per run.

The notebook exits with the summary as JSON (``as_dict``); whoever reads it back (the local runner, the demo,
the benchmark, a caller of ``mlops run --json``) rebuilds the same types with ``from_dict`` instead of reading
nested dicts by key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

SUCCESS, FAILED, SKIPPED, RUNNING = "SUCCESS", "FAILED", "SKIPPED", "RUNNING"


@dataclass(frozen=True)
class StageResult:
    """A stage's status, its duration (None when skipped) and the outputs the stage returned."""

    status: str
    duration_s: Optional[float] = None
    outputs: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        timing = {} if self.duration_s is None else {"duration_s": self.duration_s}
        return {"status": self.status, **timing, **self.outputs}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StageResult":
        outputs = {k: v for k, v in data.items() if k not in ("status", "duration_s")}
        return cls(data["status"], data.get("duration_s"), outputs)


@dataclass(frozen=True)
class JobSummary:
    job: str
    status: str
    mlflow_run_id: str
    mlflow_experiment_id: str
    start_date: str
    end_date: str
    stages: Mapping[str, StageResult]
    tables: Mapping[str, str]
    model_name: str
    aliases: Mapping[str, str]
    scored_version: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        model: dict[str, Any] = {"name": self.model_name, "aliases": dict(self.aliases)}
        if self.scored_version is not None:
            model["scored_version"] = self.scored_version
        return {"job": self.job, "status": self.status, "mlflow_run_id": self.mlflow_run_id,
                "mlflow_experiment_id": self.mlflow_experiment_id, "start_date": self.start_date,
                "end_date": self.end_date, "stages": {n: s.as_dict() for n, s in self.stages.items()},
                "tables": dict(self.tables), "model": model}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "JobSummary":
        return cls(data["job"], data["status"], data["mlflow_run_id"], data["mlflow_experiment_id"],
                   data["start_date"], data["end_date"],
                   {name: StageResult.from_dict(s) for name, s in data["stages"].items()}, data["tables"],
                   data["model"]["name"], data["model"]["aliases"], data["model"].get("scored_version"))
