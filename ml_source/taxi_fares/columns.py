"""Column names and the feature grid: the vocabulary shared by the Spark code (``schema``, ``features``) and the
Spark-free code (``online``, ``drift_detector``). No Spark import here, so an online service can use it."""

# Raw trips
PICKUP_TS = "tpep_pickup_datetime"
DROPOFF_TS = "tpep_dropoff_datetime"
DISTANCE = "trip_distance"
FARE = "fare_amount"
PICKUP_ZIP = "pickup_zip"
DROPOFF_ZIP = "dropoff_zip"
TRIP_ID = "trip_id"

# Feature tables: one row per (zip, ts), ts the end of the window the row describes.
ZIP = "zip"
TS = "ts"
FEATURE_KEYS = (ZIP, TS)

PICKUP_WINDOW_SECONDS = 3600
PICKUP_SLIDE_SECONDS = 900
DROPOFF_WINDOW_SECONDS = 1800

PICKUP_MEAN_FARE = "mean_fare_window_1h_pickup_zip"
PICKUP_COUNT = "count_trips_window_1h_pickup_zip"
DROPOFF_COUNT = "count_trips_window_30m_dropoff_zip"
DROPOFF_IS_WEEKEND = "dropoff_is_weekend"

PICKUP_FEATURE_COLUMNS = (PICKUP_MEAN_FARE, PICKUP_COUNT)
DROPOFF_FEATURE_COLUMNS = (DROPOFF_COUNT, DROPOFF_IS_WEEKEND)

# A trip's lookup keys and time features
PICKUP_LOOKUP_TS = "pickup_lookup_ts"
DROPOFF_LOOKUP_TS = "dropoff_lookup_ts"
PICKUP_HOUR = "pickup_hour"
PICKUP_WEEKDAY = "pickup_weekday"

# Model input columns, in order. All are cast to double so the MLflow signature is one simple type.
MODEL_FEATURES = (
    DISTANCE,
    PICKUP_ZIP,
    DROPOFF_ZIP,
    PICKUP_HOUR,
    PICKUP_WEEKDAY,
    PICKUP_MEAN_FARE,
    PICKUP_COUNT,
    DROPOFF_COUNT,
    DROPOFF_IS_WEEKEND,
)
LABEL = FARE
