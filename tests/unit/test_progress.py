"""Progress updates: throttled, stage changes first, nothing after close, never failing the job."""

from __future__ import annotations

from typing import Any

from worker.progress import ProgressReporter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def reporter(clock: Clock, sent: list[dict[str, Any]], enabled: bool = True) -> ProgressReporter:
    return ProgressReporter({"id": "j"}, enabled=enabled, sender=lambda job, u: sent.append(u), clock=clock)


def test_steps_are_throttled_and_the_last_step_is_sent() -> None:
    clock, sent = Clock(), []
    progress = reporter(clock, sent)
    progress.stage("sampling")
    for step in range(1, 21):
        clock.now += 0.1
        progress.step(step, 20)
    steps = [u["step"] for u in sent if "step" in u]
    assert sent[0] == {"stage": "sampling"}
    assert 3 <= len(steps) <= 6 and steps[-1] == 20
    assert steps == sorted(steps)


def test_nothing_after_close_and_nothing_when_disabled() -> None:
    clock, sent = Clock(), []
    progress = reporter(clock, sent)
    progress.close()
    progress.stage("delivering")
    assert sent == []
    silent: list[dict[str, Any]] = []
    reporter(clock, silent, enabled=False).stage("inputs")
    assert silent == []


def test_a_failing_sender_never_raises() -> None:
    def broken(job: dict[str, Any], update: dict[str, Any]) -> None:
        raise RuntimeError("network down")

    ProgressReporter({"id": "j"}, enabled=True, sender=broken).stage("inputs")
