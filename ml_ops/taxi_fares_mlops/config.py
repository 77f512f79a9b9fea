"""Typed, frozen job configs, built once from the notebook widgets.

Each job declares its parameters once (``PARAMETERS``), with a parser per parameter. ``from_widgets`` reads
every widget, parses every value and checks the cross-field rules, then raises one ``ConfigError`` listing
every problem, before any work starts. Stages receive the config object and never parse strings again.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Optional

from taxi_fares.model import ModelParams
from taxi_fares.schema import FAIL, QUARANTINE

from taxi_fares_mlops.errors import ConfigError

TRAINING_JOB = "training"
SCORING_JOB = "batch_scoring"
MONITORING_JOB = "monitoring"
DEPLOYMENT_JOB = "deployment"
SCORING_STREAM_JOB = "scoring_stream"
JOBS = (TRAINING_JOB, SCORING_JOB, MONITORING_JOB, SCORING_STREAM_JOB)

FEATURE_ENGINEERING = "feature_engineering"
TRAINING = "training"
PROMOTION = "promotion"
BATCH_SCORING = "batch_scoring"
STREAMING_SCORING = "streaming_scoring"
AVAILABLE_NOW, CONTINUOUS = "available_now", "continuous"
TRIGGER_MODES = (AVAILABLE_NOW, CONTINUOUS)
MONITORING = "monitoring"
VALIDATION = "validation"
APPROVAL = "approval"
VALIDATION_MODES = ("disabled", "dry_run", "enabled")

CHAMPION = "champion"
CHALLENGER = "challenger"
ALIASES = (CHAMPION, CHALLENGER)


class _Invalid(ValueError):
    """A value that does not parse; the message says what was expected."""


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise _Invalid(f"'{text}' is not a date (expected YYYY-MM-DD)") from None


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise _Invalid(f"'{text}' is not 'true' or 'false'")


def _int(minimum: int, maximum: Optional[int] = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise _Invalid(f"'{text}' is not a whole number") from None
        if value < minimum:
            raise _Invalid(f"{value} is below the minimum {minimum}")
        if maximum is not None and value > maximum:
            raise _Invalid(f"{value} is above the maximum {maximum:,}")
        return value
    return parse


def _float(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise _Invalid(f"'{text}' is not a number") from None
        if value != value or (value <= low if low_open else value < low) or (
                value >= high if high_open else value > high):
            brackets = ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
            raise _Invalid(f"{value} is outside {brackets}")
        return value
    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise _Invalid(f"'{text}' is not one of {', '.join(choices)}")
        return text
    return parse


def _text(text: str) -> str:
    return text.strip()


def _non_empty(text: str) -> str:
    if not text.strip():
        raise _Invalid("must not be empty")
    return text.strip()


def _run_context(text: str) -> str:
    """A job or run id as given; outside a Databricks job it stays the unsubstituted ``{{job.id}}``."""
    return text.strip()


def known(run_context: str) -> str:
    """The id, or "" when Databricks did not substitute it (a local run)."""
    return "" if run_context.startswith("{{") else run_context


def _container(text: str) -> str:
    text = text.strip()
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", text):
        raise _Invalid(f"'{text}' is not a blob container name (3-63 lower-case letters, digits, single hyphens)")
    return text


def _table_schema(text: str) -> str:
    text = text.strip()
    if text and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*", text):
        raise _Invalid(f"'{text}' is not <catalog>.<schema> (two names of letters, digits and underscores)")
    return text


# Databricks secret scope names: letters, digits, dashes, underscores, @ and periods, at most 128 characters.
_SCOPE = re.compile(r"[A-Za-z0-9_.@-]{1,128}")


def _secret_scope(text: str) -> str:
    text = text.strip()
    if not _SCOPE.fullmatch(text):
        raise _Invalid(f"'{text}' is not a secret scope name (1-128 letters, digits, '-', '_', '.', '@')")
    return text


def _lakehouse_root(text: str) -> str:
    text = text.strip()
    if re.search(r"\s", text) or ".." in text.split("/"):
        raise _Invalid(f"'{text}' is not a lakehouse path (no spaces, no '..' segments)")
    return text


def _optional_float(low: float) -> Callable[[str], Optional[float]]:
    def parse(text: str) -> Optional[float]:
        return None if not text.strip() else _float(low, float("inf"), low_open=True)(text.strip())
    return parse


@dataclass(frozen=True)
class TableVersions:
    """Delta versions to read tables at (``table=version`` pairs, as ``mlops lineage`` prints a run's): what
    retrains a model on the data it was trained on. Empty: each table as it is."""

    versions: tuple[tuple[str, int], ...] = ()

    def __str__(self) -> str:
        return ",".join(f"{table}={version}" for table, version in self.versions)

    def __bool__(self) -> bool:
        return bool(self.versions)

    def as_dict(self) -> dict[str, int]:
        return dict(self.versions)


def _table_versions(text: str) -> TableVersions:
    from taxi_fares_mlops.storage import TABLES

    pairs: list[tuple[str, int]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        table, _, version = (side.strip() for side in item.partition("="))
        if table not in TABLES:
            raise _Invalid(f"'{item}': '{table}' is not a table of the lakehouse ({', '.join(TABLES)})")
        if not version.isdigit():
            raise _Invalid(f"'{item}': the version must be a whole number >= 0 (table=version)")
        if table in dict(pairs):
            raise _Invalid(f"'{table}' is named twice")
        pairs.append((table, int(version)))
    return TableVersions(tuple(pairs))


def _optional_version(text: str) -> Optional[int]:
    if not text.strip():
        return None
    return _int(1)(text.strip())


@dataclass(frozen=True)
class Parameter:
    """One job parameter: its widget name, parser, notebook default, label and fixed choices (dropdowns)."""

    name: str
    parse: Callable[[str], Any]
    default: str
    label: str
    choices: tuple[str, ...] = ()


def _toggle(name: str, label: str) -> Parameter:
    return Parameter(name, _bool, "true", label, ("true", "false"))


COMMON = (
    Parameter("start_date", _date, "2016-01-01", "First day of the data range (YYYY-MM-DD)"),
    Parameter("end_date", _date, "2016-03-01", "Day after the last day of the range (YYYY-MM-DD)"),
    _toggle("execute_feature_engineering", "Run feature engineering"),
    Parameter("model_name", _non_empty, "taxi_fares", "Registered model name"),
    Parameter("mlflow_experiment", _non_empty, "/Shared/taxi_fares", "MLflow experiment path"),
    Parameter("mlflow_registry_uri", _text, "", "MLflow registry URI (empty: the workspace's; databricks-uc)"),
    Parameter("lakehouse_root", _lakehouse_root, "", "Lakehouse root (empty: the runtime default)"),
    Parameter("table_schema", _table_schema, "", "Tables by name in <catalog>.<schema> (empty: Delta folders)"),
    Parameter("validation_mode", _choice(FAIL, QUARANTINE), QUARANTINE, "What to do with invalid trips",
              (FAIL, QUARANTINE)),
    Parameter("secret_scope", _secret_scope, "taxi-fares", "Secret scope with the telemetry and storage credentials"),
    Parameter("databricks_job_id", _run_context, "", "Databricks job id (the job passes {{job.id}})"),
    Parameter("databricks_run_id", _run_context, "", "Databricks run id (the job passes {{job.run_id}})"),
)

_MODEL_DEFAULTS = ModelParams()  # the hyperparameters' defaults are the model's own, written once in taxi_fares
HYPERPARAMETERS = (
    Parameter("learning_rate", _float(0.0, 1.0, low_open=True), str(_MODEL_DEFAULTS.learning_rate), "Learning rate"),
    Parameter("max_iter", _int(1), str(_MODEL_DEFAULTS.max_iter), "Boosting iterations"),
    Parameter("max_depth", _int(0), str(_MODEL_DEFAULTS.max_depth), "Maximum tree depth (0: unlimited)"),
    Parameter("max_leaf_nodes", _int(2), str(_MODEL_DEFAULTS.max_leaf_nodes), "Maximum leaves per tree"),
    Parameter("min_samples_leaf", _int(1), str(_MODEL_DEFAULTS.min_samples_leaf), "Minimum samples per leaf"),
    Parameter("l2_regularization", _float(0.0, float("inf")), str(_MODEL_DEFAULTS.l2_regularization),
              "L2 regularization"),
    Parameter("random_state", _int(0), str(_MODEL_DEFAULTS.random_state), "Random seed"),
)

TRAINING_PARAMETERS = COMMON + (
    _toggle("execute_training", "Run training"),
    # Off by default: the training job trains, profiles and registers; the deployment job judges each new version
    # (validation, approval, promotion). The stages stay callable in-process for a run that asks for them.
    Parameter("execute_promotion", _bool, "false", "Run validation and promotion in this run (the deployment job "
              "does it for each new version)", ("true", "false")),
    Parameter("holdout_fraction", _float(0.0, 1.0, low_open=True, high_open=True), "0.2", "Holdout fraction"),
    Parameter("max_training_rows", _int(1), "1000000", "Rows sampled for training (bounds driver memory)"),
    Parameter("promotion_margin", _float(0.0, 1.0, high_open=True), "0.0",
              "Relative rmse gain the challenger needs over the champion"),
    Parameter("force_promote", _bool, "false", "Promote the challenger whatever its score", ("true", "false")),
    Parameter("require_approval", _bool, "false",
              "Hold a winning challenger until an operator runs `mlops approve`", ("true", "false")),
    Parameter("model_validation", _choice(*VALIDATION_MODES), "dry_run",
              "Validate the challenger before promotion: record only, or block a failing one", VALIDATION_MODES),
    Parameter("max_rmse", _optional_float(0.0), "", "Highest holdout rmse a challenger may have (empty: none)"),
    Parameter("min_r2", _float(float("-inf"), 1.0), "0.0", "Lowest holdout r2 a challenger may have"),
    Parameter("regression_margin", _float(0.0, float("inf")), "0.05",
              "Relative rmse by which a challenger may trail the champion, overall and per pickup-hour slice"),
    Parameter("retrain_reason", _text, "", "Why this run retrains (tagged on the run; the monitoring job sets it)"),
    Parameter("triggered_by", _text, "", "The MLflow run that started this one (the monitoring job sets it)"),
    Parameter("table_versions", _table_versions, "",
              "Train on these Delta versions, e.g. raw_trips=3,pickup_features=5 (mlops lineage prints a version's; "
              "empty: the latest)"),
) + HYPERPARAMETERS

MODEL_CHOICE = (
    Parameter("model_alias", _choice(*ALIASES), CHAMPION, "Model alias to use", ALIASES),
    Parameter("model_version", _optional_version, "", "Model version (overrides the alias when set)"),
)

MONITORING_THRESHOLDS = (
    Parameter("psi_threshold", _float(0.0, float("inf"), low_open=True), "0.2",
              "PSI above which a feature has drifted"),
    Parameter("ks_threshold", _float(0.0, 1.0, low_open=True), "0.1",
              "KS statistic above which a numeric feature has drifted"),
    Parameter("outlier_rate_threshold", _float(0.0, 1.0), "0.05",
              "Share of trips the outlier detector flags above which the range is DRIFT"),
    Parameter("rmse_degradation", _float(0.0, float("inf")), "0.25",
              "Realized rmse this fraction above the holdout's: DEGRADED"),
    Parameter("min_rows", _int(1), "1000", "Fewer scored rows in the range: INSUFFICIENT_DATA"),
)

SCORING_PARAMETERS = COMMON + (_toggle("execute_batch_scoring", "Run batch scoring"),) + MODEL_CHOICE + (
    Parameter("publish_predictions", _choice("auto", "true", "false"), "auto",
              "Publish to Blob storage (auto: when a storage connection is configured)", ("auto", "true", "false")),
    Parameter("blob_container", _container, "taxi-fares-predictions", "Blob container for published predictions"),
    Parameter("blob_rows_per_part", _int(1), "1000000", "Rows per published Parquet part"),
    Parameter("execute_monitoring", _bool, "false", "Run monitoring on the scored range", ("true", "false")),
) + MONITORING_THRESHOLDS

MONITORED_SOURCES = ("predictions", "inference_requests")
MONITORING_PARAMETERS = COMMON + (_toggle("execute_monitoring", "Run monitoring"),) + MODEL_CHOICE + \
    MONITORING_THRESHOLDS + (
        Parameter("retrain_on_drift", _bool, "true", "Start the training job when the status is DRIFT or DEGRADED",
                  ("true", "false")),
        Parameter("monitored_source", _choice(*MONITORED_SOURCES), "predictions",
                  "What is monitored: batch scoring's predictions table, or the online service's inference table "
                  "(the trips the version answered online)", MONITORED_SOURCES),
    )

# The incremental scoring job has no date range: each run scores the trips committed to raw_trips since the last.
_NO_RANGE = ("start_date", "end_date")
SCORING_STREAM_PARAMETERS = tuple(p for p in COMMON if p.name not in _NO_RANGE) + MODEL_CHOICE + (
    Parameter("trigger_mode", _choice(*TRIGGER_MODES), AVAILABLE_NOW,
              "available_now: score what arrived and stop; continuous: keep scoring every processing interval",
              TRIGGER_MODES),
    Parameter("processing_interval_seconds", _int(1), "60", "Seconds between micro-batches (continuous mode)"),
    Parameter("max_files_per_trigger", _int(1), "1000", "Files of raw_trips read per micro-batch at most"),
    Parameter("feature_watermark_hours", _int(1, 87_600), "168",
              "How late a trip may arrive and still update its feature windows: hours before the newest feature "
              "row held (later trips are scored with the features held)"),
)

# The deployment job judges one registered version: the one that triggered it (job parameters model_name and
# model_version, as MLflow 3 deployment jobs pass them; empty: the newest version of the model). Its range, holdout
# and hyperparameters are the version's training run's; the gates are the job's (checked against the policy).
DEPLOYMENT_TASKS = (VALIDATION, APPROVAL, PROMOTION)
_GATES = ("promotion_margin", "force_promote", "require_approval", "model_validation", "max_rmse", "min_r2",
          "regression_margin")
_JUDGED_ON_ITS_RUN = ("start_date", "end_date", "execute_feature_engineering", "validation_mode")
DEPLOYMENT_PARAMETERS = tuple(p for p in COMMON if p.name not in _JUDGED_ON_ITS_RUN) + (
    Parameter("model_version", _optional_version, "", "Model version to deploy (the trigger's; empty: the newest)"),
    Parameter("deployment_task", _choice(*DEPLOYMENT_TASKS), VALIDATION,
              "Which step of the deployment this task runs (the task's base parameter)", DEPLOYMENT_TASKS),
) + tuple(p for p in TRAINING_PARAMETERS if p.name in _GATES)

# Widgets every notebook reads before installing the wheels (so not part of the typed config).
WHEEL_PARAMETERS = ("wheel_base_path", "wheel_version")
# The deployment target's gates and bounds, as JSON (``TargetPolicy``).
TARGET_POLICY = "target_policy"
# What the deployer (and the local runner) writes as the notebook task's base parameters, never as job parameters:
# the Jobs API refuses a run or repair naming a parameter the job does not define, so a run cannot change them.
DEPLOY_PARAMETERS = WHEEL_PARAMETERS + (TARGET_POLICY,)
_VALIDATION_ORDER = {mode: rank for rank, mode in enumerate(VALIDATION_MODES)}
EMBEDDED_TARGET = "local"  # targets.yml's target for `mlops run --local`  # disabled < dry_run < enabled


@dataclass(frozen=True)
class TargetPolicy:
    """A deployment target's policy (``targets.yml``): the gates a run may tighten but never loosen, where its
    lakehouse and registry are, and the wheels deployed. The deployer writes it as the ``target_policy`` base
    parameter of each notebook task; a run cannot change a base parameter that is not a job parameter."""

    target: str
    require_approval: bool
    allow_force_promote: bool
    min_model_validation: str
    lakehouse_root: str
    mlflow_registry_uri: str
    # where the target keeps its tables, which model it registers and which scope holds its credentials: a run
    # that names others is refused (required: a policy written before these were pinned is refused, redeploy)
    table_schema: str
    model_name: str
    secret_scope: str
    # the wheels the deployer installed for the job: the notebook compares its wheel widgets with them before %pip
    wheel_base_path: str = ""
    wheel_version: str = ""
    # the validation thresholds a run may tighten but not loosen (None: no bound on this target)
    min_r2_at_least: Optional[float] = None
    regression_margin_at_most: Optional[float] = None
    holdout_fraction_at_least: Optional[float] = None

    def to_json(self) -> str:
        import json

        return json.dumps({k: getattr(self, k) for k in self.__dataclass_fields__}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TargetPolicy":
        import json

        try:
            data = json.loads(text)
            policy = cls(**data)
        except (ValueError, TypeError) as exc:
            raise _Invalid(f"is not a target policy ({exc}): redeploy the job (mlops deploy)") from None
        numbers = (policy.min_r2_at_least, policy.regression_margin_at_most, policy.holdout_fraction_at_least)
        if not isinstance(policy.require_approval, bool) or not isinstance(policy.allow_force_promote, bool) \
                or policy.min_model_validation not in _VALIDATION_ORDER \
                or not all(n is None or (isinstance(n, (int, float)) and not isinstance(n, bool)) for n in numbers):
            raise _Invalid(f"is not a target policy ({text}): redeploy the job (mlops deploy)")
        return policy

    def problems(self, values: Mapping[str, Any]) -> list[str]:
        """What in ``values`` loosens this policy or leaves the target's lakehouse or registry."""
        where = f"target '{self.target}'"
        found = []
        if values.get("force_promote") and not self.allow_force_promote:
            found.append(f"force_promote: refused: {where}'s policy does not allow force promotion "
                         f"(allow_force_promote: false); promote with `mlops approve` instead")
        if "require_approval" in values and self.require_approval and not values["require_approval"]:
            found.append(f"require_approval: false loosens {where}'s policy (require_approval: true): a run may "
                         f"tighten a gate, never loosen it; drop the parameter")
        mode = values.get("model_validation")
        if mode is not None and _VALIDATION_ORDER[mode] < _VALIDATION_ORDER[self.min_model_validation]:
            found.append(f"model_validation: '{mode}' is below {where}'s least mode '{self.min_model_validation}' "
                         f"(disabled < dry_run < enabled); use {self.min_model_validation}")
        root = self.lakehouse_root.rstrip("/")
        lakehouse = str(values.get("lakehouse_root", "")).rstrip("/")
        if root and not (lakehouse == root or lakehouse.startswith(root + "/")):
            found.append(f"lakehouse_root: '{values.get('lakehouse_root', '')}' is not under {where}'s lakehouse "
                         f"'{self.lakehouse_root}'; give a folder under it or drop the parameter")
        if "mlflow_registry_uri" in values and values["mlflow_registry_uri"] != self.mlflow_registry_uri:
            found.append(f"mlflow_registry_uri: '{values['mlflow_registry_uri']}' is not {where}'s registry "
                         f"'{self.mlflow_registry_uri}'; drop the parameter")
        # The embedded default keeps everything on this machine: a local run may name its own schema or model.
        pins = () if self.target == EMBEDDED_TARGET else (
            ("table_schema", self.table_schema), ("model_name", self.model_name), ("secret_scope", self.secret_scope))
        for name, pinned in pins:
            if name in values and values[name] != pinned:
                found.append(f"{name}: '{values[name]}' is not {where}'s '{pinned}'; drop the parameter")
        bounds = (("min_r2", self.min_r2_at_least, "at least"), ("regression_margin", self.regression_margin_at_most,
                  "at most"), ("holdout_fraction", self.holdout_fraction_at_least, "at least"))
        for name, bound, sense in bounds:
            value = values.get(name)
            if bound is None or value is None:
                continue
            if (value < bound) if sense == "at least" else (value > bound):
                found.append(f"{name}: {value} loosens {where}'s validation ({name} {sense} {bound}): a run may "
                             f"tighten a threshold, never loosen it")
        return found


def _parse_all(parameters, read: Callable[[str], Optional[str]]) -> tuple[dict[str, Any], list[str]]:
    values, problems = {}, []
    for p in parameters:
        raw = read(p.name)
        if raw is None:
            problems.append(f"{p.name}: missing")
            continue
        try:
            values[p.name] = p.parse(str(raw))
        except _Invalid as exc:
            problems.append(f"{p.name}: {exc}")
    if "start_date" in values and "end_date" in values and values["end_date"] <= values["start_date"]:
        problems.append(f"end_date: {values['end_date']} must be after start_date {values['start_date']}")
    return values, problems


def _widget_reader(dbutils) -> Callable[[str], Optional[str]]:
    def read(name: str) -> Optional[str]:
        try:
            return dbutils.widgets.get(name)
        except Exception:  # Databricks raises InputWidgetNotDefined (a Py4J error) for an undeclared widget
            return None
    return read


@dataclass(frozen=True)
class JobConfig:
    """What every job shares. The fields have no defaults: each parameter's default is written once, in its
    ``Parameter`` declaration, and reaches a config through ``from_mapping``/``from_widgets`` (``defaults()``)."""

    start_date: dt.date
    end_date: dt.date
    execute_feature_engineering: bool
    model_name: str
    mlflow_experiment: str
    mlflow_registry_uri: str
    lakehouse_root: str
    table_schema: str
    validation_mode: str
    secret_scope: str
    databricks_job_id: str
    databricks_run_id: str

    job: str = field(init=False, default="")
    STAGES: ClassVar[tuple[str, ...]] = ()

    @property
    def run_range(self) -> str:
        """What the run covers, as its MLflow run name says it."""
        return f"{self.start_date}..{self.end_date}"

    @property
    def time_range(self) -> tuple[dt.datetime, dt.datetime]:
        """[start_date, end_date) as midnight datetimes, the form Spark filters take."""
        return (dt.datetime.combine(self.start_date, dt.time()), dt.datetime.combine(self.end_date, dt.time()))

    def run_tags(self) -> dict[str, str]:
        """Extra tags for the job's MLflow run."""
        return {}

    def stage_enabled(self, stage: str) -> bool:
        return bool(getattr(self, f"execute_{stage}"))

    def as_params(self) -> dict[str, str]:
        """The parameters as MLflow params (strings), exactly as given."""
        out = {}
        for p in self.parameters():
            value = getattr(self, p.name, None)
            if value is None and p.name in HYPERPARAMETER_NAMES:
                value = getattr(self.model_params, p.name)  # type: ignore[attr-defined] # training only
            out[p.name] = "" if value is None else _format(value)
        return out

    @classmethod
    def parameters(cls) -> tuple[Parameter, ...]:
        raise NotImplementedError

    @classmethod
    def defaults(cls) -> dict[str, str]:
        """Each parameter's default as its widget holds it."""
        return {p.name: p.default for p in cls.parameters()}

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]):
        """Build from a name -> string mapping (what widgets hold). Raises ConfigError with every problem."""
        return cls._build(lambda name: values.get(name))

    @classmethod
    def declare_widgets(cls, dbutils) -> None:
        """Declare the job's notebook widgets from its parameters: each labelled, a dropdown where the choices
        are fixed. (Job parameters of the same names override the defaults, as on Databricks.)"""
        for p in cls.parameters():
            if p.choices:
                dbutils.widgets.dropdown(p.name, p.default, list(p.choices), p.label)
            else:
                dbutils.widgets.text(p.name, p.default, p.label)

    @classmethod
    def from_widgets(cls, dbutils):
        """Build from the notebook's widgets. Raises ConfigError with every problem."""
        return cls._build(_widget_reader(dbutils))

    @classmethod
    def _build(cls, read):
        values, problems = _parse_all(cls.parameters(), read)
        policy_text = read(TARGET_POLICY)
        if policy_text:  # a deployed (or locally run) job always carries its target's policy
            try:
                problems += TargetPolicy.from_json(str(policy_text)).problems(values)
            except _Invalid as exc:
                problems.append(f"{TARGET_POLICY}: {exc}")
        elif values.get("databricks_job_id"):  # a job run without it: a job not (or no longer) as deployed
            problems.append(f"{TARGET_POLICY}: missing: this job run carries no target policy, so no gate could be "
                            f"checked; redeploy the job (mlops deploy) rather than editing it by hand")
        config = None
        if not problems:
            config = cls._from_values(values, problems)
        if problems:
            raise ConfigError(problems)
        return config

    @classmethod
    def _from_values(cls, values: dict[str, Any], problems: list[str]):
        return cls(**values)


HYPERPARAMETER_NAMES = tuple(p.name for p in HYPERPARAMETERS)


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class TrainingConfig(JobConfig):
    execute_training: bool
    execute_promotion: bool
    holdout_fraction: float
    max_training_rows: int
    promotion_margin: float
    force_promote: bool
    require_approval: bool
    model_validation: str
    max_rmse: Optional[float]
    min_r2: float
    regression_margin: float
    retrain_reason: str
    triggered_by: str
    table_versions: TableVersions
    model_params: ModelParams

    job: str = field(init=False, default=TRAINING_JOB)
    # Set when the deployment job judges a registered version with this config (its training run's parameters):
    # validation and promotion then judge that version, not the challenger alias's.
    deployed_version: Optional[int] = field(init=False, default=None)
    STAGES = (FEATURE_ENGINEERING, TRAINING, VALIDATION, PROMOTION)

    @property
    def execute_validation(self) -> bool:
        """Validation judges the challenger for promotion: it runs when promotion does (and is not disabled)."""
        return self.model_validation != "disabled" and self.execute_promotion

    def run_tags(self) -> dict[str, str]:
        """What started this training run, when something other than its schedule did."""
        tags = {"retraining.reason": self.retrain_reason, "retraining.triggered_by": self.triggered_by}
        return {k: v for k, v in tags.items() if v}

    @classmethod
    def parameters(cls) -> tuple[Parameter, ...]:
        return TRAINING_PARAMETERS

    @classmethod
    def _from_values(cls, values, problems):
        if values["table_versions"] and values["execute_feature_engineering"]:
            problems.append("table_versions: retraining on recorded versions reads the tables as they were; run it "
                            "with execute_feature_engineering=false (feature engineering writes new versions)")
            return None
        hyper = {name: values.pop(name) for name in HYPERPARAMETER_NAMES}
        try:
            values["model_params"] = ModelParams(**hyper)
        except ValueError as exc:
            problems.append(str(exc))
            return None
        return cls(**values)


@dataclass(frozen=True)
class ScoringConfig(JobConfig):
    execute_batch_scoring: bool
    model_alias: str
    model_version: Optional[int]
    publish_predictions: str
    blob_container: str
    blob_rows_per_part: int
    execute_monitoring: bool
    psi_threshold: float
    ks_threshold: float
    outlier_rate_threshold: float
    rmse_degradation: float
    min_rows: int

    job: str = field(init=False, default=SCORING_JOB)
    STAGES = (FEATURE_ENGINEERING, BATCH_SCORING, MONITORING)

    @classmethod
    def parameters(cls) -> tuple[Parameter, ...]:
        return SCORING_PARAMETERS

    @property
    def model_reference(self) -> str:
        """'version N' or 'alias NAME', for messages."""
        return f"version {self.model_version}" if self.model_version else f"alias '{self.model_alias}'"


@dataclass(frozen=True)
class MonitoringConfig(JobConfig):
    execute_monitoring: bool
    model_alias: str
    model_version: Optional[int]
    psi_threshold: float
    ks_threshold: float
    outlier_rate_threshold: float
    rmse_degradation: float
    min_rows: int
    retrain_on_drift: bool
    monitored_source: str

    job: str = field(init=False, default=MONITORING_JOB)
    STAGES = (MONITORING,)

    @classmethod
    def parameters(cls) -> tuple[Parameter, ...]:
        return MONITORING_PARAMETERS


@dataclass(frozen=True)
class ScoringStreamConfig(JobConfig):
    """The incremental scoring job: the trips committed to ``raw_trips`` since its last run (a Delta stream and
    its checkpoint), their feature windows recomputed (``execute_feature_engineering``), scored by the model the
    alias or version names. ``start_date``/``end_date`` are None: the job has no range; ``target`` is the
    deployment target whose policy the run carries (``local`` without one), recorded with the checkpoint so that
    another target's is refused."""

    model_alias: str
    model_version: Optional[int]
    trigger_mode: str
    processing_interval_seconds: int
    max_files_per_trigger: int
    feature_watermark_hours: int

    job: str = field(init=False, default=SCORING_STREAM_JOB)
    target: str = field(init=False, default=EMBEDDED_TARGET)
    STAGES = (STREAMING_SCORING,)

    @property
    def execute_streaming_scoring(self) -> bool:
        return True

    @property
    def run_range(self) -> str:
        return f"incremental ({self.trigger_mode})"

    @property
    def model_reference(self) -> str:
        return f"version {self.model_version}" if self.model_version else f"alias '{self.model_alias}'"

    @classmethod
    def parameters(cls) -> tuple[Parameter, ...]:
        return SCORING_STREAM_PARAMETERS

    @classmethod
    def _build(cls, read):
        config = super()._build(read)
        policy = read(TARGET_POLICY)
        if policy:  # already checked by JobConfig._build
            object.__setattr__(config, "target", TargetPolicy.from_json(str(policy)).target)
        return config

    @classmethod
    def _from_values(cls, values, problems):
        return cls(**{name: None for name in ("start_date", "end_date")}, **values)


@dataclass(frozen=True)
class DeploymentConfig(JobConfig):
    """The deployment job's: one registered version judged (validation), held for approval when the policy asks,
    and promoted, one step per task (``deployment_task``). It has no range of its own: ``start_date``/``end_date``
    are None; the stages judge the version on its own training run's holdout."""

    model_version: Optional[int]
    deployment_task: str
    promotion_margin: float
    force_promote: bool
    require_approval: bool
    model_validation: str
    max_rmse: Optional[float]
    min_r2: float
    regression_margin: float

    job: str = field(init=False, default=DEPLOYMENT_JOB)
    STAGES = DEPLOYMENT_TASKS

    @property
    def run_range(self) -> str:
        return f"{self.deployment_task} {self.model_name} v{self.model_version or 'newest'}"

    @property
    def needs_spark(self) -> bool:
        """Only validation reads data. The approval step reads and tags the registry; promotion reuses the
        validation's scores and starts Spark only when they are stale (the champion moved since)."""
        return self.deployment_task == VALIDATION

    def stage_enabled(self, stage: str) -> bool:
        return stage == self.deployment_task and not (stage == VALIDATION and self.model_validation == "disabled")

    def gates(self) -> dict[str, str]:
        """The gate parameters as strings, for the judging config (``TrainingConfig``) built from the version's run."""
        return {name: self.as_params()[name] for name in _GATES}

    @classmethod
    def parameters(cls) -> tuple[Parameter, ...]:
        return DEPLOYMENT_PARAMETERS

    @classmethod
    def _from_values(cls, values, problems):
        return cls(start_date=None, end_date=None, execute_feature_engineering=False, validation_mode="", **values)


CONFIGS: dict[str, type[JobConfig]] = {TRAINING_JOB: TrainingConfig, SCORING_JOB: ScoringConfig,
                                       MONITORING_JOB: MonitoringConfig, SCORING_STREAM_JOB: ScoringStreamConfig}
CONFIGS[DEPLOYMENT_JOB] = DeploymentConfig
