"""The confirmation policy for manual amounts: one rule for single postings, reversals and
bulk files, whatever asks the question.

An amount above the threshold (``confirm_above``, default 100,000) needs a confirmation: a
person answering yes on a terminal, or ``--yes``. Without either it is refused (exit 8),
before anything is written. A dry run writes nothing, so it needs none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from walletctl.errors import Refused

DEFAULT_THRESHOLD = 100_000


@dataclass(frozen=True, slots=True)
class ConfirmationPolicy:
    threshold: int = DEFAULT_THRESHOLD

    def required(self, amount: int) -> bool:
        return amount > self.threshold

    def check(
        self,
        amount: int,
        *,
        what: str,
        confirmed: bool,
        ask: Callable[[str], bool] | None = None,
    ) -> None:
        """Refuse ``amount`` (for ``what``) unless it is within the threshold, already
        ``confirmed`` (--yes, a dry run), or ``ask`` (a person at a terminal; None when
        nobody can answer) says yes."""
        if confirmed or not self.required(amount):
            return
        if ask is not None:
            if ask(f"{what}: {amount:,} is above {self.threshold:,}. Post it?"):
                return
            raise Refused(f"{what}: not confirmed; nothing was posted")
        raise Refused(
            f"{what}: {amount:,} is above the confirmation threshold ({self.threshold:,}); "
            "pass --yes to confirm"
        )
