"""One entity's pushed events merged with its online window record (``fstore.compute.stream_windows``).

No I/O: ``Merger.merge`` takes the key's events of a batch (in arrival order) and what the online store holds
for the key (``@ts``, ``@w``), decides per event whether it is applied, a duplicate or late (the set's
``allowed_lateness``), and computes every applied event's windowed values over the merged events;
``Merger.write`` prepares the key's compare-and-set (``OnlineStore.swap``): the newest row and the record.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fstore.definitions.model import FeatureSetVersion

SEQ = "__fs_seq"  # each event's position in its batch, carried through the queries into the rows
_EPOCH = datetime(1970, 1, 1)


def lateness_micros(fsv: "FeatureSetVersion") -> int:
    """The set's allowed lateness in micros; 0 when none is declared (no event older than ``T`` is applied)."""
    seconds = fsv.feature_set.allowed_lateness_seconds
    return 0 if seconds is None else seconds * 1_000_000


def _micros(value: datetime) -> int:
    from fstore.storage.online.base import to_micros

    return to_micros(value)


@dataclass
class Outcome:
    """One key's merge: each event's state and windowed values, the merged events, the rows computed for it."""

    key: str
    states: dict[int, str]  # seq -> applied / duplicate / late
    values: dict[int, list[Any]]  # seq -> windowed values (typed as the feature), null for a late event
    stored_ts: int | None
    stored_w: bytes | None
    merged: list  # (ts, takes, id) of the record to write
    rows: list[dict] = field(default_factory=list)

    @property
    def applied(self) -> int:
        return sum(s == "applied" for s in self.states.values())

    @property
    def late(self) -> int:
        return sum(s == "late" for s in self.states.values())

    @property
    def duplicates(self) -> int:
        return sum(s == "duplicate" for s in self.states.values())


class Merger:
    """Merges one key's batch events with its stored record (``merge``) and prepares its write (``write``)."""

    def __init__(self, fsv: "FeatureSetVersion", windows, codec) -> None:
        from fstore.storage.online.windows import cast

        self.fsv, self.windows, self.codec = fsv, windows, codec
        self.lateness = lateness_micros(fsv)
        self.casts = [cast(w) for w in windows]

    def merge(self, key: str, events: list[tuple], hit) -> Outcome:
        """``events`` ``(seq, ts, takes, id)`` in batch order; ``hit`` the stored ``(@ts, [@w])`` or None."""
        from fstore.storage.online.base import NULL
        from fstore.storage.online.windows import decode, record_events

        stored_ts, stored_w = (None, None) if hit is None else (hit[0], hit[1][0])
        history: list = []
        usable = False
        if stored_w is not None and stored_w != NULL:
            record = decode(stored_w)
            usable = record[0] == stored_ts and record[1] == self.fsv.version  # else another row's or version's
            if usable:
                history = record_events(record, len(self.windows))
        known = {e[2] for e in history if e[2] is not None}
        # a stored row without a record of this version has no history to merge an older event into: only
        # events at or after its time apply (their windows then count what this batch brings)
        lateness = self.lateness if usable or stored_ts is None else 0
        newest = stored_ts
        states = {}
        for seq, ts, takes, ident in events:
            if newest is not None and ts < newest - lateness:
                states[seq] = "late"
            elif ident is not None and ident in known:
                states[seq] = "duplicate"
            else:
                history.append((ts, takes, ident))
                if ident is not None:
                    known.add(ident)
                newest = ts if newest is None else max(newest, ts)
                states[seq] = "applied"
        merged = sorted(history, key=lambda e: e[0])
        # beyond the lateness the record may no longer hold the event's window: unknown (null), never a wrong
        # number; a materialization of its range computes it from the source
        values = {seq: [None] * len(self.windows) if states[seq] == "late" else self._values(merged, ts)
                  for seq, ts, _, _ in events}
        return Outcome(key=key, states=states, values=values, stored_ts=stored_ts, stored_w=stored_w, merged=merged)

    def _values(self, events: list, at: int) -> list[Any]:
        """Each window's value at ``at`` over ``events`` (sorted by time), typed as its feature."""
        from fstore.storage.online.windows import combine

        record = [at, self.fsv.version, [e[0] for e in events],
                  *([e[1][i] for e in events] for i in range(len(self.windows)))]
        out = []
        for w in self.windows:
            value = combine(w, record, at)
            if value is None:
                out.append(None)
            elif w.data_type == "timestamp":
                out.append(_EPOCH + timedelta(microseconds=int(value)))
            elif w.data_type in ("int", "float", "bool"):
                out.append({"int": int, "float": float, "bool": bool}[w.data_type](value))
            else:
                out.append(self.casts[w.index](value))
        return out

    def write(self, outcome: Outcome):
        """The ``swap`` of one key, ``(fields, (key, expected @ts, expected @w, @ts, values))``, or None: the
        newest applied row validation kept (as new as the stored one) with the record as of it; else, when
        only older events were applied, the stored row's windowed values at ``T`` and the record."""
        from fstore.storage.online.base import encode_rows, encode_value
        from fstore.storage.online.windows import FIELD, encode_takes

        if not outcome.applied:
            return None
        newest = [r for r in outcome.rows if outcome.states[r[SEQ]] == "applied"
                  and (outcome.stored_ts is None or _micros(r["event_timestamp"]) >= outcome.stored_ts)]
        if newest:
            row = max(newest, key=lambda r: (r["event_timestamp"], r.get("created_timestamp") or _EPOCH, r[SEQ]))
            at = _micros(row["event_timestamp"])
            fields = (*self.codec.feature_names, FIELD)
            values = encode_rows(self.codec, [row])[0].values
        elif outcome.stored_ts is not None:
            # the row stays; the stored values of its other features are not known here: the windows only
            at = outcome.stored_ts
            fields = (*(w.feature for w in self.windows), FIELD)
            values = tuple(encode_value(v, w.data_type, field_name=w.feature)
                           for w, v in zip(self.windows, self._values(outcome.merged, at)))
        else:
            return None  # validation dropped every row of a new key: nothing online, as a run loads nothing
        record = encode_takes(self.windows, self.fsv.version, at, outcome.merged, keep_micros=self.lateness)
        return fields, (outcome.key, outcome.stored_ts, outcome.stored_w, at, (*values, record))
