"""The Deployments page's FastAPI app, mounted by Airflow's api-server at /modelship (plugins/modelship_ui.py).

    GET  /modelship/deployments       the page (HTML); anonymous: redirected to Airflow's login
    GET  /modelship/api/deployments   the same picture as JSON (modelship.overview.overview); anonymous: 401
    POST /modelship/api/deploy        {target, image, force}: trigger the release DAG with that image; 201
    GET  /modelship/static/…          stylesheet, script, icon (no data: no login needed)

Airflow's api-server does not guard a plugin's routes: each route here resolves the caller from the same
JWT the UI sends (the `_token` cookie, or an Authorization: Bearer header) with Airflow's own
resolve_user_from_token, so the configured auth manager decides who is logged in. Everything the page reads
from Airflow, and the release it triggers, goes through Airflow's REST API with that same token: Airflow's
permissions decide what each user may see and do. Only the targets' state and the model store are read
with the api-server's own settings and connections, as `modelship status` reads them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

STATIC = Path(__file__).parent / "static"
PREFIX = "/modelship"

app = FastAPI(title="modelship", docs_url=None, redoc_url=None, openapi_url=None)
app.mount("/static", StaticFiles(directory=STATIC), name="static")


class DeployRequest(BaseModel):
    target: str
    image: str  # registry/repository@sha256:…
    force: bool = False


def token_of(request: Request) -> str | None:
    """The caller's JWT as the Airflow UI sends it: an explicit Bearer header first, else the `_token` cookie."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get(COOKIE_NAME_JWT_TOKEN)


async def login(request: Request) -> tuple[Any, str]:
    """(user, token) of a logged-in caller; HTTPException 401 (no or expired token) or 403 (invalid) else."""
    from airflow.api_fastapi.core_api.security import resolve_user_from_token

    token = token_of(request)
    user = await resolve_user_from_token(token)
    return user, str(token)


def airflow_url(request: Request) -> str:
    """Where this api-server's REST API answers: [api] base_url, else the address the request came to."""
    from airflow.configuration import conf

    return (conf.get("api", "base_url", fallback="") or f"{request.url.scheme}://{request.url.netloc}").rstrip("/")


def api_for(request: Request, token: str) -> Any:
    """A REST client as the caller. (Not used as a context manager: AirflowAPI.close() calls an ApiClient.close
    that apache-airflow-client 3.3.0 does not have; the client holds nothing that needs closing.)"""
    from modelship.airflow_api import AirflowAPI

    return AirflowAPI(airflow_url(request), token)


def read_overview(request: Request, token: str) -> dict[str, Any]:
    from modelship import overview

    return overview.overview(api_for(request, token))


@app.get("/deployments", response_class=HTMLResponse)
async def deployments_page(request: Request) -> Any:
    from modelship.ui import page

    try:
        user, token = await login(request)
    except HTTPException:
        here = f"{airflow_url(request)}{PREFIX}/deployments"
        return RedirectResponse(f"{airflow_url(request)}/api/v2/auth/login?{urlencode({'next': here})}", 307)
    data = await run_in_threadpool(read_overview, request, token)
    return HTMLResponse(page.render(data, user.get_name()), headers={"Cache-Control": "no-store"})


@app.get("/api/deployments")
async def deployments_json(request: Request, caller: tuple[Any, str] = Depends(login)) -> Any:
    _, token = caller
    return JSONResponse(await run_in_threadpool(read_overview, request, token), headers={"Cache-Control": "no-store"})


_BY_DIGEST = re.compile(r"^[^/\s]+/[a-z0-9._/-]+@sha256:[0-9a-f]{64}$")


def trigger_release(request: Request, token: str, who: str, body: DeployRequest) -> tuple[int, dict[str, Any]]:
    from modelship import desired, overview
    from modelship.airflow_api import AirflowAPIError

    if body.target not in overview.TARGETS:
        return 400, {"detail": f"unknown target {body.target!r}: one of {', '.join(overview.TARGETS)}"}
    if not _BY_DIGEST.match(body.image):
        return 400, {"detail": f"{body.image!r} is not an image by digest (REGISTRY/REPOSITORY@sha256:DIGEST)"}
    api = api_for(request, token)
    try:
        held = desired.in_quarantine(overview.quarantine_events(api)).get(body.image.rpartition("@")[2])
        if held is not None and not body.force:
            return 409, {"quarantined": True, "detail": desired.quarantine_notice(held)}
        conf = {"target": body.target, "image": body.image, "force": held is not None}
        note = f"Deployments page: {who} asked to deploy this image" + (" past its quarantine" if held else "")
        run_id = api.trigger("release", conf, note=note)
    except AirflowAPIError as exc:  # Airflow's own answer: 403 for a user who may not trigger it, …
        status = re.search(r"HTTP (\d{3})", str(exc))
        return (int(status.group(1)) if status else 502), {"detail": str(exc)}
    url = f"../dags/release/runs/{quote(run_id, safe='')}"
    return 201, {"dag_run_id": run_id, "conf": conf, "url": url}


@app.post("/api/deploy")
async def deploy(request: Request, body: DeployRequest, caller: tuple[Any, str] = Depends(login)) -> Any:
    """Deploy a past record's image again (a roll-back): a release run with image=<that digest>. The login is
    checked before the body, so an anonymous caller learns nothing but 401."""
    user, token = caller
    status, answer = await run_in_threadpool(trigger_release, request, token, user.get_name(), body)
    return JSONResponse(answer, status_code=status)
