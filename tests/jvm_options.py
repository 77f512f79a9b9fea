"""How the suite runs its JVMs. The ones it starts for one job or one test (each job's, the Connect server, the
standalone cluster's) run small data for seconds: the quick compiler alone (C1) spends far less of the 2 cores on
compiling than C1 and C2 together. A JVM that lives for minutes (the suite's own session, the one Spark of the
notebook tests) wins back C2's compiling: it keeps the JVM's default. Compilation changes no result; the
benchmarks keep the JVM's default."""
import os
from typing import MutableMapping

from orchestrator.local.spark import JAVA_OPTIONS_ENV

QUICK_JIT = "-XX:TieredStopAtLevel=1"


def quick_jit_by_default() -> None:
    """Every JVM the suite starts runs C1 only, unless the environment already sets the JVM's options."""
    os.environ.setdefault(JAVA_OPTIONS_ENV, QUICK_JIT)


def for_a_long_lived_jvm(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """``env`` without the suite's C1-only default (options someone set themselves stay)."""
    if env.get(JAVA_OPTIONS_ENV) == QUICK_JIT:
        del env[JAVA_OPTIONS_ENV]
    return env
