"""JupyterLab as `make lab` starts it: the learner's first screen is the course, not a blank Launcher.

`make lab` puts this folder on JUPYTER_CONFIG_PATH, so it adds to (and does not replace) the learner's own
~/.jupyter; Jupyter writes nothing here. tests/test_lab.py starts the server and checks each choice below.
"""

c = get_config()  # noqa: F821  # Jupyter defines get_config() in the namespace it runs config files in

# The URL the server prints (and `/` redirects to) opens the tour. The path argument `jupyter lab FILE` only
# reaches a browser that Jupyter opens itself, and `make lab` opens none (--no-browser).
c.LabApp.default_url = "/lab/tree/notebooks/00_start_here.ipynb"

# Every notebook names the course's kernel: it is the only one offered, and the one a new notebook gets.
c.KernelSpecManager.allowed_kernelspecs = {"hpai"}
c.MappingKernelManager.default_kernel_name = "hpai"

# Jupyter Server's default hidden globs, plus the metadata folder that the editable install writes at the top.
c.ContentsManager.hide_globs = ["__pycache__", "*.pyc", "*.pyo", ".DS_Store", "*~", "*.egg-info"]
