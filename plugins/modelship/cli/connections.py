"""`modelship connections check`: the connections the DAGs use resolve (the compose stack's init step runs it)."""

from __future__ import annotations

import argparse
from typing import Any

from modelship.cli import COMMON


def _check_connections(args: argparse.Namespace) -> tuple[Any, str]:
    """The connections the DAGs use resolve (from Airflow's secrets backends: AIRFLOW_CONN_*, the DB, a vault);
    each is named with its type and host, never a secret."""
    from airflow.sdk import BaseHook

    from modelship.settings import Settings

    settings = Settings.get()
    found = {}
    for conn_id in (settings.wasb_conn_id, settings.registry_conn_id):
        conn = BaseHook.get_connection(conn_id)
        found[conn_id] = {"type": conn.conn_type, "host": conn.host or "(in extra)"}
    lines = [f"connection {conn_id}: type {c['type']}, host {c['host']}" for conn_id, c in found.items()]
    return found, "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    connections = sub.add_parser("connections", help="check the Airflow connections the DAGs use")
    cmds = connections.add_subparsers(dest="connections_command", metavar="COMMAND", required=True)
    p = cmds.add_parser("check", parents=[COMMON], help="the model store's and registry's connections resolve")
    p.set_defaults(handler=_check_connections)
