"""Online inference for the champion (install ``taxi_fares_mlops[serving]``; no Spark, no MLflow at run time).

``bundle`` (the verified folder the service serves), ``features`` (online feature rows), ``window`` (drift of
recent requests), ``app`` (the FastAPI service), ``loadtest`` (a bounded load generator); ``package`` builds a
bundle from the registry and the lakehouse and is the one module here that needs MLflow and Spark.
"""
