"""Fixtures for running jobs in-process: generated trips in a temporary lakehouse and job configs."""
import pytest

from taxi_fares.synthetic import generate_trips
from taxi_fares_mlops.config import SCORING_PARAMETERS, TRAINING_PARAMETERS, ScoringConfig, TrainingConfig
from taxi_fares_mlops.storage import RAW_TRIPS

START, END = "2016-01-04", "2016-01-18"


@pytest.fixture
def trips_lakehouse(spark, lakehouse):
    lakehouse.write(generate_trips(spark, 20_000, START, END, seed=5), RAW_TRIPS)
    return lakehouse


@pytest.fixture
def training_config(lakehouse):
    def build(**changes):
        values = {p.name: p.default for p in TRAINING_PARAMETERS}
        values.update(start_date=START, end_date=END, lakehouse_root=lakehouse.root, mlflow_experiment="tests",
                      max_iter="40")
        values.update({k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in changes.items()})
        return TrainingConfig.from_mapping(values)
    return build


@pytest.fixture
def scoring_config(lakehouse):
    def build(**changes):
        values = {p.name: p.default for p in SCORING_PARAMETERS}
        values.update(start_date=START, end_date=END, lakehouse_root=lakehouse.root, mlflow_experiment="tests")
        values.update({k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in changes.items()})
        return ScoringConfig.from_mapping(values)
    return build
