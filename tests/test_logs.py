"""quiet_loggers: the named loggers are raised inside the block and restored after it, also on errors."""

from __future__ import annotations

import logging

import pytest

from vdcnn_res.logs import LIGHTNING_LOGGERS, quiet_loggers


def test_levels_are_raised_inside_and_restored_after_even_on_errors():
    names = ("vdcnn_res_test_a", "vdcnn_res_test_b", "")
    logging.getLogger("vdcnn_res_test_a").setLevel(logging.DEBUG)
    before = [logging.getLogger(n or None).level for n in names]
    with pytest.raises(RuntimeError, match="boom"), quiet_loggers(names, logging.ERROR):
        assert [logging.getLogger(n or None).level for n in names] == [logging.ERROR] * 3
        assert not logging.getLogger("vdcnn_res_test_a").isEnabledFor(logging.WARNING)
        raise RuntimeError("boom")
    assert [logging.getLogger(n or None).level for n in names] == before


def test_lightning_info_lines_are_silenced(caplog):
    with caplog.at_level(logging.INFO), quiet_loggers(LIGHTNING_LOGGERS):
        for name in LIGHTNING_LOGGERS:
            logging.getLogger(name).info("Seed set to 1")
    assert "Seed set to 1" not in caplog.text
