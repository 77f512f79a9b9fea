"""The incremental scoring job's table_update trigger: rendered by the template code for a target whose tables are
in Unity Catalog, schema-valid, accepted by the workspace emulator and read back as sent; the emulator refuses a
malformed trigger as the Jobs API does (400 INVALID_PARAMETER_VALUE naming the field)."""
import copy

import pytest
import requests
from databricks.sdk import WorkspaceClient
from databricks.sdk.service.jobs import JobSettings

from fakes.databricks_workspace import WorkspaceEmulator
from orchestrator.templates import render_job, target_settings, target_variables, validate

TOKEN = "dapi-emulator-test-token"


@pytest.fixture(scope="module")
def emu():
    emulator = WorkspaceEmulator(TOKEN).start()
    yield emulator
    emulator.stop()


def stream_job(target="staging") -> dict:
    return render_job("scoring_stream", target_variables(target), target_settings(target))


def create(emu, settings):
    response = requests.post(f"{emu.url}/api/2.2/jobs/create", json=settings,
                             headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    return response.status_code, response.json()


def test_the_rendered_trigger_watches_raw_trips_and_round_trips_through_the_workspace(emu, monkeypatch):
    settings = stream_job()
    assert settings["trigger"]["table_update"] == {
        "table_names": ["staging.taxi_fares.raw_trips"], "condition": "ANY_UPDATED",
        "min_time_between_triggers_seconds": 300, "wait_after_last_change_seconds": 60}
    assert "schedule" not in settings
    assert validate(settings).as_dict() == settings
    for name in ("DATABRICKS_CONFIG_PROFILE", "DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_AUTH_TYPE"):
        monkeypatch.delenv(name, raising=False)
    w = WorkspaceClient(host=emu.url, token=TOKEN)
    job_id = w.jobs.create(**{k: v for k, v in vars(JobSettings.from_dict(settings)).items() if v is not None}).job_id
    assert w.jobs.get(job_id).settings.trigger.as_dict() == settings["trigger"]


def test_a_target_without_unity_catalog_tables_gets_a_periodic_trigger():
    trigger = stream_job("dev")["trigger"]
    assert "table_update" not in trigger and trigger["periodic"] == {"interval": 1, "unit": "HOURS"}


def _with(change):
    settings = copy.deepcopy(stream_job())
    change(settings)
    return settings


def _update(**fields):
    return lambda s: s["trigger"]["table_update"].update(fields)


@pytest.mark.parametrize("change, field", [
    (_update(wait_after_last_change_seconds=30), "trigger.table_update.wait_after_last_change_seconds"),
    (_update(min_time_between_triggers_seconds=59), "trigger.table_update.min_time_between_triggers_seconds"),
    (_update(table_names=["raw_trips"]), "trigger.table_update.table_names[0]"),
    (_update(table_names=[]), "trigger.table_update.table_names"),
    (_update(table_names=["a.b.raw_trips", "A.B.RAW_TRIPS"]), "trigger.table_update.table_names"),
    (_update(condition="SOMETIMES"), "condition"),
    (lambda s: s.update(schedule={"quartz_cron_expression": "0 0 5 * * ?", "timezone_id": "UTC"}), "schedule"),
    (lambda s: s["trigger"].update(periodic={"interval": 1, "unit": "HOURS"}), "trigger"),
], ids=["wait-below-60", "min-time-below-60", "not-three-levels", "no-table", "named-twice", "unknown-condition",
        "beside-a-schedule", "two-trigger-kinds"])
def test_the_emulator_refuses_a_malformed_table_update_trigger_naming_the_field(emu, change, field):
    status, payload = create(emu, _with(change))
    assert (status, payload["error_code"]) == (400, "INVALID_PARAMETER_VALUE"), payload
    assert field in payload["message"], payload["message"]
