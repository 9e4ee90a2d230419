"""The Deployments page in the Airflow UI, driven in a real headless browser (Debian's Chromium, over the
DevTools protocol) after a demo-like story on the docker target:

v1 released → v2 promoted, built by ci, released → v3 promoted, its image breaks in production: the release
rolls back to v2 and quarantines it. The page is served by this repository's plugin in a real api-server on
the session's metadata DB (with this module's settings: its own model store, image repository, source clone
and serving port; no kubernetes connection). It shows v2 serving and why that is not the desired state, v3
quarantined with its reason, the timeline with links to the runs, the model versions; anonymous requests
are refused; "deploy this one" starts a release run as the logged-in user, forced past a quarantine only
after confirming.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.screenshots import Page, chromium
from modelship import net
from tests.e2e.pipeline import REPO, announce_image, asset_events, git, push_broken, run_dag, why

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.azurite]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def story(ci_v1, pipeline_env, trained, tmp_path_factory, docker_client, registry, start_api_server):
    from modelship.model_store import open_store

    commit, ci_run = ci_v1
    assert str(ci_run.state) == "success", why(ci_run)
    source = tmp_path_factory.mktemp("ui-source") / "repo"
    git("clone", "-q", "--no-hardlinks", str(REPO), str(source))
    git("checkout", "-q", "-B", "main", commit, cwd=source)
    port = net.free_port()
    out: dict[str, Any] = {"commit": commit, "port": port, "runs": {}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELSHIP_MODEL_STORE", "wasb:ui-models")
        # Its own repository too: the builds here must not be "already pushed" for the other e2e stories.
        mp.setenv("MODELSHIP_IMAGE_REPOSITORY", "modelship/ui-story")
        mp.setenv("MODELSHIP_SOURCE_REPO", str(source))
        mp.setenv("MODELSHIP_DOCKER_DEPLOY_PORT", str(port))
        mp.delenv("AIRFLOW_CONN_MODELSHIP_KUBERNETES", raising=False)
        store = open_store()
        for version in ("v1", "v2", "v3"):
            store.publish(trained[version])

        def released(name: str) -> Any:
            run = run_dag("release", {"target": "docker"})  # the desired state, as the nightly release
            out["runs"][name] = run.run_id
            return run

        store.promote("digits", "v1")
        assert str(released("v1").state) == "success"
        store.promote("digits", "v2")
        built = run_dag("ci", {"commit": commit})
        assert str(built.state) == "success", why(built)
        out["v2_image"] = [e for e in asset_events("image") if e["commit"] == commit and e["model_version"] == "v2"][-1]
        assert str(released("v2").state) == "success"

        store.promote("digits", "v3")
        v3_sha = store.manifest_sha256("digits", "v3")
        v2 = out["v2_image"]
        labels = {"io.modelship.model.version": "v3", "io.modelship.model.sha256": v3_sha}
        tag = f"{commit[:12]}-v3-broken"
        out["broken"] = push_broken(docker_client, registry, f"{v2['repository']}@{v2['digest']}", tag, labels)
        announce_image({**v2, "tag": tag, "digest": out["broken"], "model_version": "v3", "model_sha256": v3_sha,
                        "rebuilt": True})  # fmt: skip
        broken_run = released("v3")
        assert str(broken_run.state) == "failed", why(broken_run)
        out["v1_image"] = [e for e in asset_events("image") if e["commit"] == commit and e["model_version"] == "v1"][-1]

        with start_api_server("api-server-ui") as rest:
            out["rest"] = rest
            out["base"] = rest["MODELSHIP_AIRFLOW_URL"]
            password = json.loads(Path(rest["MODELSHIP_AIRFLOW_PASSWORD_FILE"]).read_text())["admin"]
            answer = requests.post(f"{out['base']}/auth/token", json={"username": "admin", "password": password},
                                   timeout=30)  # fmt: skip
            out["token"] = answer.json()["access_token"]
            yield out
    for container in docker_client.containers.list(all=True, filters={"label": f"io.modelship.port={port}"}):
        container.remove(force=True)


@pytest.fixture(scope="module")
def browser(story) -> Page:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed ({CHROMIUM}): apt-get install -y chromium")
    with chromium(CHROMIUM) as page:
        yield page


def login(page: Page, story: dict[str, Any]) -> None:
    """The session the UI's login leaves behind: the JWT in the `_token` cookie."""
    page.send("Network.setCookie", name="_token", value=story["token"], domain="127.0.0.1", path="/", httpOnly=True)


def frame(page: Page, body: str) -> Any:
    """Evaluate `body` (an expression over `doc`) in the page's frame inside the Airflow UI; None until loaded."""
    return page.js(
        "(() => { const f = document.querySelector('iframe[title=Deployments]'); const doc = f && f.contentDocument;"
        " if (!doc || doc.readyState !== 'complete' || !doc.querySelector('header')) return null;"
        f" return ({body}); }})()"
    )


def api(story: dict[str, Any], method: str, path: str, **kwargs: Any) -> requests.Response:
    session = requests.Session()
    session.trust_env = False
    return session.request(method, f"{story['base']}{path}", timeout=30, allow_redirects=False,
                           headers={"Authorization": f"Bearer {story['token']}"}, **kwargs)  # fmt: skip


def test_anonymous_requests_are_refused(story, browser: Page) -> None:
    anonymous = requests.Session()
    anonymous.trust_env = False
    page = anonymous.get(f"{story['base']}/modelship/deployments", allow_redirects=False, timeout=30)
    assert page.status_code == 307 and "/api/v2/auth/login?next=" in page.headers["location"], page.headers
    assert anonymous.get(f"{story['base']}/modelship/api/deployments", timeout=30).status_code == 401
    deploy = anonymous.post(f"{story['base']}/modelship/api/deploy", json={"target": "docker", "image": "x"},
                            timeout=30)  # fmt: skip
    assert deploy.status_code == 401
    forged = anonymous.get(f"{story['base']}/modelship/api/deployments", headers={"Authorization": "Bearer forged"},
                           timeout=30)  # fmt: skip
    assert forged.status_code in (401, 403)

    browser.send("Network.clearBrowserCookies")
    browser.open(f"{story['base']}/modelship/deployments")
    browser.wait_for("location.pathname.includes('/login')", "Airflow's login page")
    assert "Deployments" not in browser.js("document.body.innerText")


def test_the_page_shows_v2_serving_v3_quarantined_and_the_timeline(story, browser: Page) -> None:
    login(browser, story)
    browser.open(f"{story['base']}/plugin/deployments")
    browser.wait_for("[...document.querySelectorAll('a')].some(a => a.innerText.trim() === 'Deployments')",
                     "Deployments in the UI's navigation")  # fmt: skip
    deadline = time.monotonic() + 60
    while frame(browser, "doc.querySelector('[data-target=docker]') !== null") is not True:
        assert time.monotonic() < deadline, browser.js("document.body.innerText")
        time.sleep(0.5)
    commit, v2, broken = story["commit"], story["v2_image"], story["broken"]

    docker = frame(browser, "doc.querySelector('[data-target=docker]').innerText")
    assert "serving" in docker and "healthy" in docker and "v2" in docker and commit[:12] in docker, docker
    assert v2["digest"][:19] in docker, docker
    assert "not the desired state" in docker and "quarantined" in docker and broken in docker, docker
    kubernetes = frame(browser, "doc.querySelector('[data-target=kubernetes]').innerText")
    assert "cannot be reached" in kubernetes, kubernetes  # no connection here: shown, and the page still works

    held = frame(browser, f"(doc.querySelector('tr.quarantine[data-digest=\"{broken}\"]') || {{}}).innerText")
    assert held and "v3" in held and "failed" in held, held  # the reason: the rollout that failed, rolled back

    rows = frame(browser, "[...doc.querySelectorAll('tr.record')].map(r => [r.dataset.run, r.className,"
                          " [...r.querySelectorAll('a.run')].map(a => a.href)])")  # fmt: skip
    mine = {run_id: (cls, links) for run_id, cls, links in rows if run_id in story["runs"].values()}
    runs = story["runs"]
    assert [mine[runs[n]][0] for n in ("v1", "v2", "v3")] == ["record deployed", "record deployed",
                                                              "record rolled_back"]  # fmt: skip
    order = [run_id for run_id, _, _ in rows]
    assert order.index(runs["v3"]) < order.index(runs["v2"]) < order.index(runs["v1"])  # newest first
    release_link, ci_link = mine[runs["v2"]][1]
    assert release_link.endswith(f"/dags/release/runs/{urllib.parse.quote(runs['v2'], safe='')}")
    assert "/dags/ci/runs/" in ci_link

    models = frame(browser, "[...doc.querySelectorAll('tr.model')].map(r => [r.dataset.version, r.innerText])")
    by_version = dict(models)
    assert "production" in by_version["v3"] and "production" not in by_version["v2"], by_version
    assert "0.9" in by_version["v2"]  # its held-out accuracy

    # A run link opens that run in the Airflow UI around the frame.
    frame(browser, f"doc.querySelector('tr.record[data-run=\"{runs['v2']}\"] a.run').click() || true")
    browser.wait_for(f"location.pathname.endsWith('/dags/release/runs/{urllib.parse.quote(runs['v2'], safe='')}')",
                     "the release run in the Airflow UI")  # fmt: skip


def wait_in_frame(page: Page, body: str, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := frame(page, body)):
        assert time.monotonic() < deadline, f"the page did not show {what}: {frame(page, 'doc.body.innerText')}"
        time.sleep(0.3)
    return value


def test_deploy_this_one_starts_a_release_run_as_the_user(story, browser: Page) -> None:
    login(browser, story)
    browser.open(f"{story['base']}/plugin/deployments")
    wait_in_frame(browser, "!!doc.querySelector('tr.record')", "the history")
    started: list[str] = []
    try:
        # Roll back to v1: its record's "Deploy this one".
        v1 = story["runs"]["v1"]
        frame(browser, f"doc.querySelector('tr.record[data-run=\"{v1}\"] button.deploy').click() || true")
        said = wait_in_frame(browser, "doc.querySelector('#action.ok') && doc.querySelector('#action').innerText",
                             "the started release run")  # fmt: skip
        started.append(frame(browser, "doc.querySelector('#action a').innerText"))
        run = api(story, "GET", f"/api/v2/dags/release/dagRuns/{urllib.parse.quote(started[0], safe='')}").json()
        v1_ref = f"{story['v1_image']['repository']}@{story['v1_image']['digest']}"
        assert run["conf"] == {"target": "docker", "image": v1_ref, "force": False}, (said, run)
        assert "admin" in (run.get("note") or "") and run["run_type"] == "manual"

        # The quarantined v3: asked first, then forced.
        v3 = story["runs"]["v3"]
        frame(browser, f"doc.querySelector('tr.record[data-run=\"{v3}\"] button.deploy').click() || true")
        question = wait_in_frame(browser, "!doc.querySelector('#confirm').hidden && doc.querySelector('#confirm')"
                                          ".innerText", "the quarantine question")  # fmt: skip
        assert "quarantined" in question and story["broken"] in question, question
        frame(browser, "doc.querySelector('#confirm .force').click() || true")
        said = wait_in_frame(browser, "doc.querySelector('#action.ok') && doc.querySelector('#action').innerText"
                                      ".includes('forced')", "the forced release run")  # fmt: skip
        started.append(frame(browser, "doc.querySelector('#action a').innerText"))
        run = api(story, "GET", f"/api/v2/dags/release/dagRuns/{urllib.parse.quote(started[1], safe='')}").json()
        assert run["conf"]["force"] is True and run["conf"]["image"].endswith(story["broken"]), run
    finally:  # nothing schedules them here; leave no queued run behind for the rest of the session
        for run_id in started:
            api(story, "DELETE", f"/api/v2/dags/release/dagRuns/{urllib.parse.quote(run_id, safe='')}")


def test_the_json_api_and_a_refused_deploy(story) -> None:
    data = api(story, "GET", "/modelship/api/deployments").json()
    docker = next(t for t in data["targets"] if t["name"] == "docker")
    assert docker["status"]["model_version"] == "v2" and docker["desired"]["in_desired_state"] is False
    assert story["broken"] in {q["digest"] for q in data["quarantined"]}
    bad = api(story, "POST", "/modelship/api/deploy", json={"target": "docker", "image": "not-an-image"})
    assert bad.status_code == 400
    held = api(story, "POST", "/modelship/api/deploy",
               json={"target": "docker", "image": f"{story['v2_image']['repository']}@{story['broken']}"})  # fmt: skip
    assert held.status_code == 409 and held.json()["quarantined"] is True  # not without force
