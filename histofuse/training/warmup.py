"""A linear learning-rate warm-up for the backbone groups a phase newly unfreezes.

Fresh layers meet gradients shaped by a head that already fits the data; at the
full rate their first steps can throw away what the frozen phase learned. Their
rate ramps from 0 to its target over the first steps while the head and the
groups trained before keep theirs.

The ramp's progress lives in the optimizer's own parameter groups
(``warmup_target``, ``warmup_step``), so an epoch checkpoint resumes it exactly.
"""

from __future__ import annotations


class Warmup:
    def __init__(self, optimizer, steps: int):
        self.steps = steps
        self.groups = [g for g in optimizer.param_groups if g.get("warmup")] if steps > 0 else []
        for group in self.groups:
            group.setdefault("warmup_target", group["lr"])
            group.setdefault("warmup_step", 0)

    def before_step(self) -> None:
        """Called before each optimizer step that will happen (not on accumulation-only batches)."""
        for group in self.groups:
            if group["warmup_step"] < self.steps:
                group["warmup_step"] += 1
                group["lr"] = group["warmup_target"] * group["warmup_step"] / self.steps

    def follow_scheduler(self, before: list[float]) -> None:
        """A plateau cut during the ramp lowers its target by the same factor instead of being undone."""
        for group, old in zip(self.groups, before):
            if group["warmup_step"] < self.steps and old > 0 and group["lr"] != old:
                group["warmup_target"] *= group["lr"] / old

    def rates(self) -> list[float]:
        return [group["lr"] for group in self.groups]
