// The Deployments page's one action, and its links into the Airflow UI.
//
// "Deploy this one" POSTs {target, image, force} to api/deploy, which triggers the release DAG through
// Airflow's REST API as the logged-in user (their permissions decide). A quarantined image asks first, in
// the page (the UI's frame allows no confirm()), and is sent with force=true only once the user agrees.
"use strict";

const action = document.getElementById("action");
const confirmBox = document.getElementById("confirm");
let pending = null;

function say(html, kind) {
  action.hidden = false;
  action.className = `action ${kind}`;
  action.innerHTML = html;
}

function text(value) {
  const span = document.createElement("span");
  span.textContent = value;
  return span.innerHTML;
}

async function deploy(button, force) {
  const { image, target, label } = button.dataset;
  say(`Starting a release of ${text(label)} to ${text(target)}…`, "busy");
  let answer;
  try {
    const response = await fetch("api/deploy", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image, target, force }),
    });
    answer = { status: response.status, body: await response.json() };
  } catch (error) {
    say(`Could not reach the page's API: ${text(String(error))}`, "bad");
    return;
  }
  if (answer.status === 409 && answer.body.quarantined) {
    pending = button;
    confirmBox.querySelector(".question").textContent =
      `${label} is quarantined: a release failed with it. Deploy it to ${target} anyway?`;
    confirmBox.querySelector(".why").textContent = answer.body.detail;
    confirmBox.hidden = false;
    action.hidden = true;
    return;
  }
  if (answer.status !== 201) {
    say(`Refused (HTTP ${answer.status}): ${text(answer.body.detail || JSON.stringify(answer.body))}`, "bad");
    return;
  }
  const run = answer.body;
  say(
    `Release run <a data-ui-link href="${text(run.url)}">${text(run.dag_run_id)}</a> started: ` +
      `${text(label)} to ${text(target)}${force ? " (forced past its quarantine)" : ""}.`,
    "ok",
  );
}

// Open Airflow UI pages in the UI around this frame (its sandbox allows no top navigation; a same-origin
// page may still move the UI's router), else as a plain link.
function openInUi(event) {
  const link = event.target.closest("a[data-ui-link]");
  if (!link || window.top === window) return;
  try {
    const url = new URL(link.href);
    window.top.history.pushState(null, "", url.pathname + url.search + url.hash);
    window.top.dispatchEvent(new PopStateEvent("popstate"));
    event.preventDefault();
  } catch (error) {
    // another origin: let the link open in the frame
  }
}

document.addEventListener("click", (event) => {
  openInUi(event);
  const button = event.target.closest("button.deploy");
  if (button) {
    deploy(button, false);
  } else if (event.target.closest("#confirm .force") && pending) {
    confirmBox.hidden = true;
    deploy(pending, true);
    pending = null;
  } else if (event.target.closest("#confirm .cancel")) {
    confirmBox.hidden = true;
    pending = null;
  }
});
