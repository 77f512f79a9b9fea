"""pyspark's Python daemon for local sessions, started without the archives Spark puts first on its path.

Spark starts the daemon that forks the Python workers with its own archives first on ``PYTHONPATH``
(``pyspark.zip``, the py4j zip and the spark-core jar), so the workers import pyspark from a zip file; and before
every task a worker calls ``importlib.invalidate_caches()``, which on Python 3.11 re-reads the central directory
of every zip archive an import has looked into: 0.1-0.16 s of CPU per task, on the cores the task needs. A
pip-installed pyspark has the same modules, of the same version, in site-packages: this module drops Spark's
archives from the path before anything imports pyspark, then runs pyspark's own daemon unchanged. It is what
``spark.python.daemon.module`` names in a local session (``orchestrator.local.spark.local_conf``); on Databricks
the runtime's own daemon runs.

Nothing here may import pyspark (or anything that does) at module level.
"""
from __future__ import annotations

import os
import sys
import zipimport


def _spark_archive(entry: str) -> bool:
    """Whether a path entry is an archive Spark adds: a zip or jar file inside ``SPARK_HOME`` (for a pip-installed
    pyspark, the package's own folder), which Spark sets for its Python processes."""
    home = os.environ.get("SPARK_HOME")
    if not home or not entry.endswith((".zip", ".jar")) or not os.path.isfile(entry):
        return False
    return os.path.commonpath([os.path.realpath(home), os.path.realpath(entry)]) == os.path.realpath(home)


def _installed_pyspark() -> bool:
    """Whether a directory (not an archive) on the path holds the pyspark and py4j packages."""
    def has(package: str) -> bool:
        return any(os.path.isfile(os.path.join(entry, package, "__init__.py"))
                   for entry in sys.path if entry and os.path.isdir(entry))
    return has("pyspark") and has("py4j")


def drop_spark_archives() -> list[str]:
    """Remove Spark's archives from ``sys.path`` and forget the zip importers made for them (and for any path
    inside them), when pyspark and py4j are installed as packages; returns the entries removed. Entries of the
    user's own ``PYTHONPATH`` stay, and so do the files a job ships (Spark adds those to a worker's path per
    task)."""
    if not _installed_pyspark():
        return []
    removed = [entry for entry in sys.path if _spark_archive(entry)]
    sys.path[:] = [entry for entry in sys.path if entry not in removed]
    for key, finder in list(sys.path_importer_cache.items()):
        if isinstance(finder, zipimport.zipimporter) and any(key.startswith(entry) for entry in removed):
            del sys.path_importer_cache[key]
    return removed


if __name__ == "__main__":
    drop_spark_archives()
    from pyspark import daemon  # noqa: E402 - only once the path no longer leads into Spark's archives

    daemon.manager()
