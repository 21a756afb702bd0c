"""unet-train: config-driven UNet segmentation training for 2D images."""

import os
import signal
import sys

__version__ = "0.1.0"


def _interrupted_while_starting(signum: int, frame: object) -> None:
    """Ctrl-C while a console script imports its modules: one line and status 130, no traceback (nothing is
    written yet). The script's ``main`` puts Python's own handler back (:func:`unet_train.cli.console_script`)."""
    sys.stderr.write(f"Interrupted by Ctrl-C: {os.path.basename(sys.argv[0])} stopped.\n")
    os._exit(130)


if os.path.basename(sys.argv[0]).startswith("unet-") and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_while_starting)
