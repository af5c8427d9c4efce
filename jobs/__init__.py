"""The application layer between the domain (``etm``: datasets, models, measures, the evaluation) and its
front ends (``api`` over HTTP, ``workers`` under Celery): where models and datasets are stored and
registered (``storage``, ``registry``, ``builtins``) and how a job is admitted (``admission``). It may
import the domain and infrastructure clients (fsspec, Redis); the domain imports nothing from here, and
nothing here imports FastAPI or Celery.
"""
