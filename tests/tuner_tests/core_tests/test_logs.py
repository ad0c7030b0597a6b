from __future__ import annotations

import logging

import pytest

from tuner.core.logs import quieted


def test_quieted_loggers_pass_errors_alone_and_get_their_levels_back() -> None:
    chatty, set_already = logging.getLogger("tests.chatty"), logging.getLogger("tests.set_already")
    set_already.setLevel(logging.DEBUG)
    with pytest.raises(RuntimeError), quieted("tests.chatty", "tests.set_already"):
        assert not chatty.isEnabledFor(logging.WARNING) and chatty.isEnabledFor(logging.ERROR)
        assert not set_already.isEnabledFor(logging.WARNING)
        raise RuntimeError  # the levels come back however the block ends
    assert chatty.level == logging.NOTSET and set_already.level == logging.DEBUG
