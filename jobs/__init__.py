"""The jobs layer: job records and their Redis store, the result store, the problem table, job submission
and callbacks. Shared by the API (``api/``) and the workers (``workers/``); imports neither of them, nor
FastAPI, nor Celery, so either side can change its transport without touching the other.
"""
