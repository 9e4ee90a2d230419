"""python -m devstack: the one entry of the development stack (the Makefile's targets call it).

    up [--k8s]              make up (K8S=1): the local stack and Airflow; --k8s also the local cluster
    down                    make down
    status                  what `up` started, and whether it runs
    demo [--target T]       make demo: the story through Airflow's REST API (TARGET=kubernetes: on the cluster)
    distributed up|down|status|running|images     the compose stack (make up-distributed / down-distributed)
    prepare-ci              the app's test environment, built ahead of the first ci run (make up starts it)
    registry-gc [--registry-dir DIR]   reclaim the local registry's unreferenced blobs (after modelship gc)
    cluster up|down|status  the local Kubernetes cluster alone
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from devstack import REPO_ROOT, StackError
from modelship.net import NotReady


def _state(args: argparse.Namespace) -> Path:
    return Path(args.state).resolve()


def _stack(args: argparse.Namespace) -> int:
    from devstack.stack import Stack

    stack = Stack(_state(args))
    if args.command == "up":
        stack.up(kubernetes=args.k8s)
    elif args.command == "down":
        stack.down()
    elif args.command == "env":
        print(stack.env_file)
    else:
        for name, running in stack.status().items():
            print(f"{name:14} {'running' if running else 'stopped'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from devstack.demo import main as demo

    return demo(["--target", args.target] if args.target else [])


def _distributed(args: argparse.Namespace) -> int:
    from devstack.compose import Distributed

    stack = Distributed(Path(args.distributed_state).resolve())
    action = args.action
    if action == "up":
        stack.up()
    elif action == "down":
        stack.down(volumes=args.volumes)
    elif action == "running":  # exit status only
        return 0 if stack.running() else 1
    elif action == "images":
        stack.stack.docker.start()
        stack.ensure_images()
    else:
        print(stack.status())
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from devstack.cluster import LocalCluster

    cluster = LocalCluster()
    if args.action == "up":
        cluster.acquire("cli")
        print(f"the local cluster is up: KUBECONFIG={cluster.kubeconfig} {cluster.kubectl} get nodes")
    elif args.action == "down":
        stopped = cluster.release("cli")
        print("stopped" if stopped else f"still in use by {', '.join(cluster.users()) or 'nobody (not running)'}")
    else:
        print(f"{'running' if cluster.ready() else 'stopped'}; leases: {', '.join(cluster.users()) or 'none'}")
    return 0


def _registry_gc(args: argparse.Namespace) -> int:
    from devstack.components import Registry

    registry = Registry.at(Path(args.registry_dir).resolve() if args.registry_dir else _state(args) / "registry")
    print(f"registry {registry.address}: {registry.garbage_collect()}")
    return 0


def _prepare_ci(args: argparse.Namespace) -> int:
    from devstack.stack import prepare_ci

    logging.getLogger("modelship").setLevel(logging.INFO)  # the build's progress, into prepare-ci.log
    # `make down` meanwhile: exit through the build's cleanup (its staging folder, its install-stage images).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    prepare_ci()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--state", default=os.environ.get("MODELSHIP_STATE", str(REPO_ROOT / ".state")))
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="the local stack and Airflow (make up)")
    up.add_argument("--k8s", action="store_true", help="also start the local Kubernetes cluster and its connection")
    for name in ("down", "status", "env"):
        sub.add_parser(name)
    for name in ("up", "down", "status", "env"):
        sub.choices[name].set_defaults(handler=_stack)
    demo = sub.add_parser("demo", help="the whole story, headless (make demo)")
    demo.add_argument("--target", choices=("docker", "kubernetes"), default=os.environ.get("TARGET") or None)
    demo.set_defaults(handler=_demo)
    dist = sub.add_parser("distributed", help="the compose stack (make up-distributed)")
    dist.add_argument("action", choices=("up", "down", "status", "running", "images"))
    dist.add_argument("--volumes", action="store_true", help="down: also delete the named volumes (all data)")
    default = os.environ.get("MODELSHIP_DISTRIBUTED_STATE", str(REPO_ROOT / ".state" / "distributed"))
    dist.add_argument("--distributed-state", default=default)
    dist.set_defaults(handler=_distributed)
    cluster = sub.add_parser("cluster", help="the local Kubernetes cluster alone")
    cluster.add_argument("action", choices=("up", "down", "status"))
    cluster.set_defaults(handler=_cluster)
    prepare = sub.add_parser("prepare-ci", help="build the app's test environment ahead of ci (make up runs it)")
    prepare.set_defaults(handler=_prepare_ci)
    gc = sub.add_parser("registry-gc", help="reclaim the local registry's unreferenced blobs (stops it briefly)")
    gc.add_argument("--registry-dir", help="the registry's state folder (default: <state>/registry)")
    gc.set_defaults(handler=_registry_gc)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return args.handler(args)
    except (StackError, NotReady) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
