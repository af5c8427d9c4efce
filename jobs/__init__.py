"""The application layer between the domain (``etm``: datasets, models, measures, the evaluation) and its
front ends (``api`` over HTTP, ``workers`` under Celery), shared by both and importing neither, nor FastAPI,
nor Celery:

- where models and datasets are stored and registered (``storage``, ``registry``, ``builtins``) and how a
  job is admitted (``admission``);
- job records and their Redis store (``records``, ``job_store``), the result store (``results``), the one
  exception -> problem table (``problems``), job submission (``submit``), the job's public view (``view``)
  and callbacks (``webhooks``); the Celery task names and configuration as plain data (``queue``).

It may import the domain and infrastructure clients (fsspec, Redis); the domain imports nothing from here.
"""
