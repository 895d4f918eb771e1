"""The consultation state machine."""

from __future__ import annotations

import itertools

import pytest

from telemed.consultations.state import (
    TRANSITIONS,
    ConsultationState,
    IllegalTransition,
    check_transition,
)

S = ConsultationState
ALLOWED = {
    (S.SCHEDULED, S.WAITING),
    (S.SCHEDULED, S.CANCELLED),
    (S.WAITING, S.IN_PROGRESS),
    (S.WAITING, S.CANCELLED),
    (S.IN_PROGRESS, S.FINISHED),
}


@pytest.mark.parametrize(("current", "target"), sorted(ALLOWED))
def test_the_lifecycle_moves_are_allowed(current: S, target: S) -> None:
    assert check_transition(current, target) is target


@pytest.mark.parametrize(
    ("current", "target"),
    [pair for pair in itertools.product(S, S) if pair not in ALLOWED],
)
def test_every_other_move_is_refused(current: S, target: S) -> None:
    with pytest.raises(IllegalTransition) as refused:
        check_transition(current, target)
    assert refused.value.current is current
    assert refused.value.target is target


def test_finished_and_cancelled_are_final() -> None:
    assert TRANSITIONS[S.FINISHED] == frozenset() == TRANSITIONS[S.CANCELLED]
    assert S.FINISHED.is_over
    assert S.CANCELLED.is_over
    assert not any(state.is_over for state in (S.SCHEDULED, S.WAITING, S.IN_PROGRESS))
