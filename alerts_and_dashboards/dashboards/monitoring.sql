-- Databricks SQL dashboard over the monitoring tables (replace ${schema} with the target's table_schema).

-- Drift per feature and window: PSI and KS against the thresholds in force.
SELECT window_start, window_end, model_version, feature, metric, value, threshold, breached
FROM ${schema}.drift_metrics
WHERE metric IN ('psi', 'ks')
ORDER BY window_start DESC, breached DESC, value DESC;

-- Realized error against the training holdout's, per window.
SELECT window_start, window_end, model_version,
       max(CASE WHEN metric = 'rmse' THEN value END) AS rmse,
       max(CASE WHEN metric = 'holdout_rmse' THEN value END) AS holdout_rmse,
       max(CASE WHEN metric = 'rmse_ratio' THEN value END) AS rmse_ratio,
       max(CASE WHEN metric = 'rows' THEN value END) AS labelled_rows
FROM ${schema}.performance_metrics
GROUP BY window_start, window_end, model_version
ORDER BY window_start DESC;
