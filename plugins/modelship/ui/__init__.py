"""modelship inside the Airflow UI: the Deployments page and its JSON API.

    app.py     the FastAPI app Airflow's api-server mounts at /modelship (plugins/modelship_ui.py registers
               it, and the page as an external view in the UI's navigation); every route but the static
               files requires an Airflow login
    page.py    the page, rendered from modelship.overview (the same reads as `modelship status | history`)
    static/    its stylesheet, script (the roll-back action) and icon
"""
