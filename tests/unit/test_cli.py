"""The mlops command: version, argument errors, and data generation into the lakehouse."""
import subprocess
import sys

import pytest
from pyspark.sql import functions as F

from orchestrator.cli import main
from orchestrator.paths import project_version
from taxi_fares_mlops.storage import RAW_TRIPS


def test_version_matches_the_version_file():
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "--version"], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == f"mlops {project_version()}"


def test_installed_wheels_share_the_version():
    import taxi_fares
    import taxi_fares_mlops

    assert taxi_fares.__version__ == taxi_fares_mlops.__version__ == project_version()


@pytest.mark.parametrize("argv, message", [
    (["data", "generate", "--rows", "ten"], "'ten' is not a whole number"),
    (["data", "generate", "--rows", "0"], "'0' must be at least 1"),
    (["data", "generate", "--start", "2016-13-01"], "'2016-13-01' is not a date"),
])
def test_bad_arguments_are_named(capsys, argv, message):
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


def test_end_before_start_is_refused(lakehouse):
    with pytest.raises(SystemExit, match="--end .* must be after --start"):
        main(["data", "generate", "--start", "2016-02-01", "--end", "2016-01-01"])


def test_data_generate_writes_exactly_the_rows(spark, lakehouse, capsys):
    code = main(["data", "generate", "--rows", "1234", "--start", "2016-01-01", "--end", "2016-01-08",
                 "--seed", "3"])
    assert code == 0
    trips = lakehouse.read(spark, RAW_TRIPS)
    assert trips.count() == 1234
    bounds = trips.agg(F.min("tpep_pickup_datetime").cast("date"), F.max("tpep_pickup_datetime").cast("date")).first()
    assert (str(bounds[0]), str(bounds[1])) >= ("2016-01-01", "2016-01-01") and str(bounds[1]) <= "2016-01-07"
    assert "wrote table 'raw_trips'" in capsys.readouterr().err
