"""The exception tree of the MLOps wheel. Catch ``MlopsError`` for anything this package raises on purpose."""


def first_line(exc: BaseException, with_type: bool = False) -> str:
    """The first line of an exception's message (JVM errors run to hundreds of lines), optionally typed."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if with_type else text.splitlines()[0]


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


class RegistryError(MlopsError):
    """A registered model, version or alias does not exist or cannot be used."""


class StageError(MlopsError):
    """A stage failed; names the stage and the cause's type and first line (a JVM error's stack stays in the
    chained exception and the logs, not in the message)."""

    def __init__(self, stage, cause):
        self.stage = stage
        self.cause = cause
        super().__init__(f"stage '{stage}' failed: {first_line(cause, with_type=True)}")
