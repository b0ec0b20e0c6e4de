"""Executors of app_common (``client_api_executor.ClientAPIExecutor``)."""
