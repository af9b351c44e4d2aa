"""Run inside the sandbox by its own Python, before anything the model wrote: apply the
session's resource limits, then become the IPython kernel.

It imports nothing of hal9100 (the package is not in the sandbox). The limits are set here
rather than on bwrap so that bwrap's own set-up is not counted against them, and so that
they bind every process the code starts: hard limits cannot be raised again.
"""

import json
import os
import resource
import shutil
import sys


def main() -> None:
    config = json.loads(sys.argv[1])
    # Matplotlib's font cache, built by `hal9100 sandbox setup`: its config directory must be
    # writable, and building the cache again would cost every new kernel a second or more.
    if os.path.isdir(config["mplconfig"]):
        shutil.copytree(config["mplconfig"], os.environ["MPLCONFIGDIR"], dirs_exist_ok=True)
    for name, value in config["limits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    os.execv(
        sys.executable,
        [
            sys.executable,
            "-m",
            "ipykernel_launcher",
            "-f",
            config["connection_file"],
            # History is a SQLite file in HOME: nothing needs it and it costs a write a cell.
            "--HistoryManager.enabled=False",
            # Tracebacks without source context: shorter for the model, same information.
            "--InteractiveShell.xmode=Plain",
            f"--IPKernelApp.exec_files={json.dumps([config['startup_file']])}",
            "--IPKernelApp.parent_handle=0",
        ],
    )


if __name__ == "__main__":
    main()
