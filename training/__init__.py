"""Training, export and evaluation of the digits model (see train.py, evaluate.py, dataset.py)."""

import os

# onnxruntime's Linux wheel collects telemetry (a device id and an event store under ~/.cache) as soon as
# it is imported, unless this is set first. CI and Airflow workers must not phone home; the package
# __init__ runs before any module here imports onnxruntime.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
