"""Deploying to and operating on a Databricks workspace with databricks-sdk: upload, import, jobs, runs."""
