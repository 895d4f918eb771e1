"""The consultation state machine: every allowed move, and nothing else."""

from __future__ import annotations

from enum import StrEnum


class ConsultationState(StrEnum):
    SCHEDULED = "scheduled"
    WAITING = "waiting"
    IN_PROGRESS = "in_progress"
    FINISHED = "finished"
    CANCELLED = "cancelled"

    @property
    def is_over(self) -> bool:
        return self in (ConsultationState.FINISHED, ConsultationState.CANCELLED)


TRANSITIONS: dict[ConsultationState, frozenset[ConsultationState]] = {
    # The doctor opens the consultation; the patient waits to be admitted.
    ConsultationState.SCHEDULED: frozenset(
        {ConsultationState.WAITING, ConsultationState.CANCELLED}
    ),
    # The doctor admits the patient; or gives up before anyone was seen.
    ConsultationState.WAITING: frozenset(
        {ConsultationState.IN_PROGRESS, ConsultationState.CANCELLED}
    ),
    ConsultationState.IN_PROGRESS: frozenset({ConsultationState.FINISHED}),
    ConsultationState.FINISHED: frozenset(),
    ConsultationState.CANCELLED: frozenset(),
}


class IllegalTransition(Exception):
    def __init__(self, current: ConsultationState, target: ConsultationState) -> None:
        super().__init__(f"a {current.value} consultation cannot become {target.value}")
        self.current = current
        self.target = target


def check_transition(current: ConsultationState, target: ConsultationState) -> ConsultationState:
    """Return ``target`` if the move is allowed; raise IllegalTransition otherwise."""
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(current, target)
    return target
