"""workers.limits: reasons for exceptions without a message, out-of-memory detection, the time limit."""

from __future__ import annotations

import signal
import time

import pytest

from workers.limits import JobTimeLimit, explain, out_of_memory, time_limit


class ResizeImgError(Exception):
    """As RapidOCR raises it: no message, OpenCV's error as the cause."""


def _chained() -> Exception:
    try:
        try:
            raise ValueError("cv2.resize: dsize.area() > 0 is false")
        except ValueError as cause:
            raise ResizeImgError() from cause
    except ResizeImgError as exc:
        return exc


def test_an_exception_without_a_message_is_explained_by_its_cause() -> None:
    assert explain(_chained()) == "ResizeImgError (caused by ValueError: cv2.resize: dsize.area() > 0 is false)"
    assert explain(KeyError("k")) == "KeyError: 'k'"
    assert explain(RuntimeError()) == "RuntimeError (the engine gave no message)"
    assert explain(MemoryError()) == "MemoryError (an allocation failed)"


@pytest.mark.parametrize(("exc", "oom"), [
    (MemoryError(), True),
    (RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : bad allocation"), True),
    (RuntimeError("Failed to allocate memory for requested buffer of size 123"), True),
    (ValueError("cannot identify image file"), False),
])
def test_out_of_memory_is_recognised_in_any_engine_s_words(exc: Exception, oom: bool) -> None:
    assert out_of_memory(exc) is oom
    try:
        raise RuntimeError("wrapped") from exc
    except RuntimeError as outer:
        assert out_of_memory(outer) is oom


def test_the_time_limit_interrupts_python_code_and_is_not_an_ordinary_exception() -> None:
    t = time.monotonic()
    with pytest.raises(JobTimeLimit) as e:
        with time_limit(0.2):
            while True:
                try:
                    time.sleep(0.01)  # noqa: work that never ends
                except Exception:  # noqa: BLE001 - a stage's own handler must not swallow the limit
                    pass
    assert e.value.seconds == 0.2 and time.monotonic() - t < 2
    with time_limit(5):
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 4
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # disarmed when the block ends
