"""JupyterHub's configuration file for `make hub`.

The decisions are code in common.course.hub (`configure`); the values of this run (users, ports, folders)
are the settings that `python -m common.course.hub` wrote into the state folder named by $HPAI_HUB_DIR.
"""

from common.course.hub import configure, load_settings

c = get_config()  # type: ignore[name-defined]  # noqa: F821  # JupyterHub defines get_config() where it runs this file
configure(c, load_settings())
