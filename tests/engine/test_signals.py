"""GracefulStop: the first signal asks to stop, a second Ctrl-C aborts, handlers are restored."""

from __future__ import annotations

import os
import signal

import pytest

from unet_train.engine.signals import GracefulStop, interrupted


def test_first_signal_sets_the_flag_second_ctrl_c_aborts(capfd):
    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal is signal.SIGTERM  # the handler ran; nothing was raised
        assert capfd.readouterr().err.strip() == "SIGTERM: stopping after this step, saving last.pt."  # at once
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_message_gives_the_exit_status_and_the_command(tmp_path):
    error = interrupted(signal.SIGTERM, tmp_path / "my run" / "last.pt", 7, saved=True)
    assert error.exit_code == 143
    assert str(error).endswith(f"Resume with: unet-train 'ckpt={tmp_path}/my run/last.pt'")
    assert "not updated" in str(interrupted(signal.SIGINT, tmp_path / "last.pt", 7, saved=False))
