"""Ingestion: every way an object reaches vlwatch — ``upload`` (bulk from files), ``scan`` (listing the bucket),
``bucket_events`` (S3/MinIO/SeaweedFS notification documents) served by ``listener`` — ends in one idempotent
``register`` (``register.py``), after whose commit the jobs' tasks are sent."""
