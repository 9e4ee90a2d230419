#!/bin/sh
# Same contract as the official apache/airflow image's entrypoint, for the commands the compose file
# uses: `bash ...` / `python ...` run as given; anything else is an airflow subcommand
# (`scheduler`, `celery worker ...`, `db migrate`).
set -e
case "${1:-}" in
  bash|sh|python|python3) exec "$@" ;;
  airflow) shift; exec airflow "$@" ;;
  *) exec airflow "$@" ;;
esac
