"""The forward context: what a forward pass is part of, readable by any module.

Meta-learning calls one network in many roles: the support pass of inner step ``k``, the
query pass after the last step, with a softmax temperature that anneals over the inner steps
(MetaNAS), for one sampled sub-network of a supernet (H-Meta-NAS). Modules learn their role
from :func:`current_context` instead of from extra forward arguments, so that any model
runs unchanged under ``torch.func.functional_call``, ``vmap`` and the task-batched engine.

The context lives in a :class:`contextvars.ContextVar`: it is set for a block with
:func:`forward_context` (nested blocks change some fields and inherit the rest), and task
threads run in a copy of their caller's context.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from metarch.models.norm import BatchNormContext

__all__ = ["ForwardContext", "Phase", "current_context", "forward_context"]

#: ``plain``: an ordinary forward (no inner loop); ``support``: a pass of the inner loop;
#: ``query``: the pass that scores adapted parameters.
Phase = Literal["plain", "support", "query"]


@dataclass(frozen=True)
class ForwardContext:
    """What the current forward pass is part of.

    Attributes:
        step: Inner step (a support pass of step ``k``; the query pass after ``S`` steps is
            step ``S``).
        phase: ``plain``, ``support`` or ``query``.
        temperature: Softmax temperature for architecture weights (1 unless set); see
            :attr:`current_temperature`.
        temperature_schedule: The temperature as a function of the inner step, for an
            inner loop that anneals it step by step (MetaNAS); overrides ``temperature``.
        subnet: The sampled sub-network of a supernet (its configuration), or ``None`` for
            the whole network.
        norm: What batch normalisation does in this pass (``None``: plain batch norm).
    """

    step: int = 0
    phase: Phase = "plain"
    temperature: float = 1.0
    temperature_schedule: Callable[[int], float] | None = None
    subnet: Mapping[str, Any] | None = None
    norm: BatchNormContext | None = None

    @property
    def current_temperature(self) -> float:
        """The temperature of this pass: the schedule's at :attr:`step`, if one is set."""
        if self.temperature_schedule is not None:
            return float(self.temperature_schedule(self.step))
        return self.temperature


_PLAIN = ForwardContext()  # frozen, so sharing it as the default is safe
_CONTEXT: ContextVar[ForwardContext | None] = ContextVar("metarch_forward", default=None)


def current_context() -> ForwardContext:
    """The context of the forward pass running now (a plain one outside any block)."""
    return _CONTEXT.get() or _PLAIN


@contextlib.contextmanager
def forward_context(**changes: Any) -> Iterator[ForwardContext]:
    """Run the enclosed block in the current context with ``changes`` made to it.

    Example::

        with forward_context(temperature=0.5):          # set by a learner for a task
            with forward_context(step=2, phase="support"):  # set by the inner loop
                model(x)                                   # modules see all three
    """
    context = dataclasses.replace(current_context(), **changes)
    token = _CONTEXT.set(context)
    try:
        yield context
    finally:
        _CONTEXT.reset(token)
