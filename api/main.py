"""``uvicorn api.main:app``: the API with settings from the environment."""

from api.app import create_app

app = create_app()
