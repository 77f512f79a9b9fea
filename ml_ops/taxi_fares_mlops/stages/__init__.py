"""The MLOps stages. Each is a function ``(spark, config, context) -> outputs`` wrapped by ``@stage``."""
from taxi_fares_mlops.stages.batch_scoring import batch_scoring
from taxi_fares_mlops.stages.feature_engineering import feature_engineering
from taxi_fares_mlops.stages.monitoring import monitoring
from taxi_fares_mlops.stages.promotion import promotion
from taxi_fares_mlops.stages.streaming_scoring import streaming_scoring
from taxi_fares_mlops.stages.training import training
from taxi_fares_mlops.stages.validation import validation

__all__ = ["feature_engineering", "training", "promotion", "batch_scoring", "monitoring", "validation",
           "streaming_scoring"]
