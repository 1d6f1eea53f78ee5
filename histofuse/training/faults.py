"""What goes wrong while a phase trains: a loss that is no longer a number, and a loss that keeps rising."""

from __future__ import annotations

from histofuse.errors import HistofuseError
from histofuse.recipe import PhaseConfig


class NonFiniteLoss(Exception):
    def __init__(self, step: int | str, value: float):
        super().__init__(f"loss {value} at step {step}")
        self.step, self.value = step, value


def non_finite_message(fault: NonFiniteLoss, index: int, phase: PhaseConfig, phase_epoch: int, best_epoch: int) -> str:
    """What to say when a phase stops on a NaN/inf loss; without best weights to go on from, the run ends here."""
    step = "validation" if fault.step == "validation" else f"step {fault.step}"
    where = f"phase '{phase.name}' (phases[{index}]), its epoch {phase_epoch}, {step}"
    advice = (f"Lower phases[{index}].lr (head {phase.lr.head:g}, backbone {phase.lr.backbone:g}) or keep "
              "training.grad_clip > 0.")
    if not best_epoch:
        raise HistofuseError(f"the training loss became {fault.value} at {where}, before any epoch produced usable weights. {advice}")
    return (
        f"the training loss became {fault.value} at {where}: phase stopped. Continuing from the best weights "
        f"(epoch {best_epoch}); the last complete epoch checkpoint is kept. {advice}"
    )


class DivergenceWatch:
    """One phase's training losses; three rising epochs ending well above the best are said once, not trained through."""

    def __init__(self, index: int, phase: PhaseConfig):
        self.index, self.phase, self.losses, self.warned = index, phase, [], False

    def add(self, train_loss: float) -> str | None:
        losses = self.losses
        losses.append(train_loss)
        rising = len(losses) >= 4 and losses[-4] < losses[-3] < losses[-2] < losses[-1] and losses[-1] > 1.5 * min(losses)
        if not rising or self.warned:
            return None
        self.warned = True
        return (
            f"phase '{self.phase.name}': the training loss rose three epochs in a row ({losses[-4]:.4f} -> {losses[-1]:.4f}); "
            f"the learning rate may be too high (phases[{self.index}].lr)"
        )
