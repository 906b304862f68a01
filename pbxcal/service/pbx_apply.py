"""One PBX's side of the reconciler: read back, compare with the desired state, send the
difference, record what was applied.

What it does: ``PbxApplier`` holds what the reconciler knows about one PBX — its
settings, the title parser with its known extensions, the *applied* state (read back
from the PBX, then tracked as changes succeed), the extensions whose last change the PBX
refused, and the *held* extensions (a link of theirs has not been read yet, so their
forwarding on the PBX is left as it is). ``apply`` sends the difference for the due
extensions (or, after a read-back, for all of them) in one batch and maps the PBX's
errors to what the reconciler does next (``ApplyOutcome``).

Every call here costs in proportion to the extensions it is given (a read-back: to the
PBX's extensions); nothing walks the links.

What it must not do: plan (the reconciler gives it the desired state), or decide when
to run (the reconciler's loop does).

Start reading at ``PbxApplier.apply``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pbxcal.core.targets import TitleParser
from pbxcal.errors import LeaseLost, PbxError, PbxUnavailable
from pbxcal.pbx import ForwardingState, Pbx
from pbxcal.service.metrics import Metrics

#: Part of the reconciler: it logs under its name (operators filter on it).
log = logging.getLogger("pbxcal.service.reconciler")


@dataclass(frozen=True)
class PbxSettings:
    """How the reconciler treats one PBX."""

    extensions: frozenset[str] = frozenset()
    discover_extensions: bool = True
    readback_interval: timedelta = timedelta(seconds=60)


@dataclass(frozen=True)
class ApplyOutcome:
    """What the reconciler does after one ``PbxApplier.apply``."""

    retry: bool = False  # a change was refused: retry the refused ones shortly
    read_back: bool = False  # read the PBX back before the next change


@dataclass
class PbxApplier:
    """See the module docstring."""

    name: str
    pbx: Pbx
    settings: PbxSettings
    parser: TitleParser
    metrics: Metrics
    on_applied: Callable[[str, ForwardingState], Awaitable[None]] | None = None
    discovered: frozenset[str] | None = None
    extensions_read_at: datetime | None = None
    next_readback: datetime | None = None
    refused: dict[str, str] = field(default_factory=dict)
    #: absent until the first read-back
    applied: ForwardingState | None = None
    unavailable: bool = False
    #: extension -> how many of its links have not been read yet
    held: Counter[str] = field(default_factory=Counter)

    # -- held extensions (links not read yet) -----------------------------------------

    def hold(self, extension: str) -> None:
        """One more link of ``extension`` is not read yet: leave its forwarding alone."""
        self.held[extension] += 1
        if self.held[extension] == 1:
            log.warning(
                "PBX %s extension %s: a linked calendar has not been read yet; "
                "leaving its forwarding on the PBX as it is until the first read",
                self.name,
                extension,
            )

    def release(self, extension: str) -> None:
        """A link of ``extension`` was read (or went away)."""
        self.held[extension] -= 1
        if self.held[extension] <= 0:
            del self.held[extension]

    # -- applying ---------------------------------------------------------------------

    async def apply(
        self,
        due: Collection[str],
        desired: Mapping[str, tuple[str, ...]],
        readback: bool,
    ) -> ApplyOutcome:
        """Send the difference between ``desired`` and the applied state: for the ``due``
        extensions, or for every extension when ``readback`` (the PBX is read first)."""
        try:
            if readback or self.applied is None:
                self.applied = await self.pbx.read_applied()
                readback = True
            applied = self.applied
            exts: Iterable[str]
            if readback:
                wanted: Mapping[str, tuple[str, ...]] = desired
                exts = set(desired) | set(applied)
            else:
                wanted = {ext: desired.get(ext, ()) for ext in due}
                exts = wanted.keys()
            changes = {
                ext: wanted.get(ext, ())
                for ext in exts
                if ext not in self.held and wanted.get(ext, ()) != applied.get(ext, ())
            }
            if self.unavailable:
                self.unavailable = False
                log.info("PBX %s reachable again; applying the difference", self.name)
            if readback and changes and not all(ext in due for ext in changes):
                log.info(
                    "PBX %s: repairing %d forwardings after read-back", self.name, len(changes)
                )
            if self.refused:
                for ext in set(exts) - set(changes):  # nothing to do there any more
                    self.refused.pop(ext, None)
            if not changes:
                return ApplyOutcome()
            result = await self.pbx.apply(changes)
        except LeaseLost as exc:  # another process writes this PBX (pbxcal.cluster)
            log.debug("PBX %s: not written here: %s", self.name, exc)
            return ApplyOutcome(read_back=True)  # read back first once the lease is ours
        except PbxUnavailable as exc:
            if not self.unavailable:  # once per outage, not every tick
                log.warning("PBX %s unavailable, will apply when it returns: %s", self.name, exc)
                self.unavailable = True
            return ApplyOutcome(read_back=True)  # full difference once it is back
        except PbxError as exc:  # a whole-batch refusal: read back and retry it all
            log.error("PBX %s refused the changes, retrying shortly: %s", self.name, exc)
            return ApplyOutcome(retry=True, read_back=True)
        self._record(applied, changes, result.refused)
        if self.on_applied is not None:
            done = {e: t for e, t in changes.items() if e not in result.refused}
            await self.on_applied(self.name, done)
        return ApplyOutcome(retry=bool(result.refused))

    def _record(
        self,
        applied: ForwardingState,
        changes: Mapping[str, tuple[str, ...]],
        refused: Mapping[str, str],
    ) -> None:
        for ext, targets in changes.items():
            if ext in refused:
                if self.refused.get(ext) != refused[ext]:
                    log.error(
                        "PBX %s extension %s: change refused: %s", self.name, ext, refused[ext]
                    )
                self.metrics.forwarding_changes.labels("refused").inc()
                continue
            self.refused.pop(ext, None)
            if targets:
                applied[ext] = tuple(targets)
                self.metrics.forwarding_changes.labels("set").inc()
            else:
                applied.pop(ext, None)
                self.metrics.forwarding_changes.labels("clear").inc()
        self.refused.update(refused)
        done = {e: t for e, t in changes.items() if e not in refused}
        if done:
            log.info(
                "PBX %s: %d forwardings changed (%s)",
                self.name,
                len(done),
                ", ".join(f"{e}={'&'.join(t) or '-'}" for e, t in sorted(done.items())[:5])
                + (" ..." if len(done) > 5 else ""),
            )
