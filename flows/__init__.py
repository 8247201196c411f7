"""Prefect flows: they only wire tasks together."""

from tasks.logs import send_logs_to_prefect

send_logs_to_prefect()  # aepipe's own log lines reach the runs' logs in the Prefect UI
