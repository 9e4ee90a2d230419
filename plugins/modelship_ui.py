"""Airflow plugin: modelship's Deployments page in the Airflow UI's navigation (modelship.ui).

Airflow imports every module directly under plugins/ (the modelship package itself is in .airflowignore).
The api-server mounts the page's FastAPI app at /modelship; the UI shows the page, in a frame, under
"Deployments" in its navigation (an external view at /plugin/deployments). Its routes require an Airflow
login (modelship.ui.app).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from modelship.ui.app import PREFIX, app


class ModelshipUIPlugin(AirflowPlugin):
    name = "modelship"
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "modelship"}]
    external_views = [
        {
            "name": "Deployments",
            # Relative (no leading slash): the UI resolves it against its own base URL.
            "href": f"{PREFIX.lstrip('/')}/deployments",
            "destination": "nav",
            "url_route": "deployments",
            "icon": f"{PREFIX.lstrip('/')}/static/icon.svg",
            "nav_top_level": True,
        }
    ]
