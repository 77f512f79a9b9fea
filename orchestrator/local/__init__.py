"""Run Databricks notebooks on this machine: the notebook parser, a local dbutils, the kernel and the runner."""
