"""What every stage needs, once: the run context and the ``@stage`` wrapper.

The wrapper opens the stage's telemetry span, logs the start and the end with the duration, sets the MLflow tag
``stage.<name>`` (RUNNING, then SUCCESS or FAILED) and the tag ``stage.<name>.duration_s``, records the stage's
outputs in the context, and turns any failure into one ``StageError`` that names the stage (the exception is
recorded on the stage's span). The run itself is ended by ``run_job``.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pyspark.sql import SparkSession

from taxi_fares_mlops import telemetry
from taxi_fares_mlops.credentials import Credentials
from taxi_fares_mlops.errors import StageError
from taxi_fares_mlops.storage import Lakehouse
from taxi_fares_mlops.summary import FAILED, RUNNING, SKIPPED, SUCCESS, StageResult
from taxi_fares_mlops.tracking import Tracking

logger = logging.getLogger(__name__)


@dataclass
class StageContext:
    """The run a stage works in: lakehouse, the MLflow run and registry (``tracking``), credentials, and the
    outputs of the stages so far. Stages reach MLflow only through ``tracking``."""

    lakehouse: Lakehouse
    tracking: Tracking
    results: dict[str, StageResult] = field(default_factory=dict)
    tables_written: list[str] = field(default_factory=list)
    credentials: Credentials = field(default_factory=lambda: Credentials(None, ""))

    @property
    def mlflow_run_id(self) -> str:
        return self.tracking.run_id

    @property
    def mlflow_experiment_id(self) -> str:
        return self.tracking.experiment_id

    def wrote(self, table: str) -> None:
        if table not in self.tables_written:
            self.tables_written.append(table)


StageFunction = Callable[[SparkSession, Any, StageContext], dict]


def stage(name: str) -> Callable[[StageFunction], StageFunction]:
    """Wrap a stage function ``(spark, config, context) -> outputs`` with timing, tags, logs and errors."""

    def decorate(fn: StageFunction) -> StageFunction:
        @functools.wraps(fn)
        def run(spark: SparkSession, config: Any, context: StageContext) -> dict:
            context.tracking.set_tags({f"stage.{name}": RUNNING})
            started = time.monotonic()
            try:
                with telemetry.span(f"stage {name}", stage=name) as span:
                    logger.info("stage %s started", name)
                    outputs = fn(spark, config, context) or {}
                    span.set_attributes({k: v for k, v in outputs.items() if isinstance(v, (int, float, str))})
            except Exception as exc:
                duration = time.monotonic() - started
                _finish(context, name, FAILED, duration, {"error": str(exc)})
                logger.error("stage %s failed after %.1fs: %s", name, duration, exc)
                raise StageError(name, exc) from exc
            duration = time.monotonic() - started
            _finish(context, name, SUCCESS, duration, outputs)
            logger.info("stage %s finished in %.1fs", name, duration)
            return outputs

        setattr(run, "stage_name", name)  # noqa: B010 - the wrapper carries its stage name
        return run

    return decorate


def skip(context: StageContext, name: str, reason: str) -> None:
    context.tracking.set_tags({f"stage.{name}": SKIPPED})
    context.results[name] = StageResult(SKIPPED)
    logger.info("stage %s skipped (%s)", name, reason)


def _finish(context: StageContext, name: str, status: str, duration: float, outputs: dict) -> None:
    context.tracking.set_tags({f"stage.{name}": status, f"stage.{name}.duration_s": f"{duration:.1f}"})
    context.results[name] = StageResult(status, round(duration, 2), outputs)
