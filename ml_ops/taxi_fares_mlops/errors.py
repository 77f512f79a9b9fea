"""The exception tree of the MLOps wheel. Catch ``MlopsError`` for anything this package raises on purpose."""
import re

# A JVM error reaches Python as "An error occurred while calling o123.save.\n: <java class>: <message>\n\tat ...":
# its first line says nothing, the Java exception on the second line does, and an operating-system reason
# (a full disk, a read-only folder) may sit only in a "Caused by" further down.
_PY4J_HEADER = re.compile(r"An error occurred while calling \S+$")
_JAVA_EXCEPTION = re.compile(r"^: (?:[\w$]+\.)*([\w$]+): (.*?)(?:\s+SQLSTATE: \w+)?$")
OS_REASONS = ("No space left on device", "Read-only file system", "Permission denied", "Disk quota exceeded")


def first_line(exc: BaseException, with_type: bool = False) -> str:
    """The first line of an exception's message (JVM errors run to hundreds of lines), optionally typed. For a
    JVM error: the Java exception's class and message, and the operating-system reason if one is named."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    lines = text.splitlines()
    kind, line = type(exc).__name__, lines[0]
    if _PY4J_HEADER.fullmatch(line) and len(lines) > 1:
        java = _JAVA_EXCEPTION.match(lines[1])
        if java:
            kind, line = java.group(1), java.group(2)
            reason = next((r for r in OS_REASONS if r in text and r not in line), None)
            if reason:
                line = f"{line} ({reason})"
    return f"{kind}: {line}" if with_type else line


class MlopsError(Exception):
    """Base class of every error raised on purpose by taxi_fares_mlops."""


class ConfigError(MlopsError):
    """A job parameter is missing or malformed. Lists every problem found, not just the first."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("invalid job parameters:\n  - " + "\n  - ".join(self.problems))


class DataError(MlopsError):
    """Input data is missing or fails validation."""


class StorageError(MlopsError):
    """A table or file could not be read or written; the message names it."""


class MissingTableError(StorageError):
    """The table does not exist (yet): a stage that creates it has not run."""


class TrackingError(MlopsError):
    """The MLflow tracking store is unreachable, locked or refusing; the message names it (without credentials)."""


class RegistryError(MlopsError):
    """A registered model, version or alias does not exist or cannot be used."""


class StageError(MlopsError):
    """A stage failed; names the stage and the cause's type and first line (a JVM error's stack stays in the
    chained exception and the logs, not in the message)."""

    def __init__(self, stage: str, cause: BaseException):  # noqa: B042 - __reduce__ below rebuilds it from both
        self.stage = stage
        self.cause = cause
        super().__init__(f"stage '{stage}' failed: {first_line(cause, with_type=True)}")

    def __reduce__(self):  # pickled (Spark, multiprocessing) and copied with its own arguments, not the message
        return type(self), (self.stage, self.cause)
