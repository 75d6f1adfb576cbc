"""The push log list's time filters and its CSV export (issue #17).

``CreatedFilter`` is one list filter for "when was it accepted": quick windows counted back
from now (last hour, 24 hours, 7 days: ``?created=1h``) and a custom range (``?created_from=
…&created_to=…``, in the console's timezone, ``to`` exclusive). ``csv_rows`` turns the
list's filtered queryset into CSV lines for ``PushLogAdmin.export_view``, streamed and
bounded (``EXPORT_MAX_ROWS``), with every id whole.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from push_app.models import PushLog

#: The quick windows of ``CreatedFilter``: parameter value, label, length.
WINDOWS: tuple[tuple[str, str, timedelta], ...] = (
    ("1h", "Last hour", timedelta(hours=1)),
    ("24h", "Last 24 hours", timedelta(hours=24)),
    ("7d", "Last 7 days", timedelta(days=7)),
)
#: The most rows one export writes: an export is a streamed response, but a forgotten
#: filter over months of logs must not hold a worker and the database for minutes.
EXPORT_MAX_ROWS = 100_000
#: Rows fetched from the database per round trip while exporting.
EXPORT_CHUNK = 2_000
#: The export's columns, in order.
CSV_HEADER = ("id", "status", "client", "created_at", "published_at", "broadcast",
              "target_count", "users", "topic", "idempotency_key", "payload_bytes",
              "delivered", "acked", "accepted_node", "error")
#: A spreadsheet runs a cell that starts with one of these as a formula ("CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def parse_moment(value: str) -> datetime:
    """``2026-11-30``, ``2026-11-30T18:05`` (as a ``datetime-local`` input sends it) or any
    ISO 8601 time, read in the console's timezone unless it carries one."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise IncorrectLookupParameters(f"not a date or time: {value!r}") from exc
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


class CreatedFilter(admin.ListFilter):
    """Accepted within a quick window counted back from now, or between two moments."""

    title = "accepted"
    template = "admin/console/created_filter.html"
    quick_param, from_param, to_param = "created", "created_from", "created_to"
    #: The test seam: what "now" is for the quick windows.
    clock: Callable[[], datetime] = staticmethod(timezone.now)

    def __init__(self, request: HttpRequest, params: dict[str, Any], model: Any,
                 model_admin: Any) -> None:
        super().__init__(request, params, model, model_admin)
        self.request = request
        for name in self.expected_parameters():
            if name in params:
                value = params.pop(name)
                self.used_parameters[name] = value[-1] if isinstance(value, list) else value

    def expected_parameters(self) -> list[str | None]:
        return [self.quick_param, self.from_param, self.to_param]

    def has_output(self) -> bool:
        return True

    def _param(self, name: str) -> str:
        return str(self.used_parameters.get(name) or "")

    def bounds(self) -> tuple[datetime | None, datetime | None]:
        """``(from, to)`` of what the request asked; None where open."""
        quick = self._param(self.quick_param)
        if quick:
            window = next((w for v, _, w in WINDOWS if v == quick), None)
            if window is None:
                raise IncorrectLookupParameters(f"no window {quick!r}")
            return self.clock() - window, None
        start, end = self._param(self.from_param), self._param(self.to_param)
        return (parse_moment(start) if start else None, parse_moment(end) if end else None)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        start, end = self.bounds()
        if start is not None:
            queryset = queryset.filter(created_at__gte=start)
        if end is not None:
            queryset = queryset.filter(created_at__lt=end)
        return queryset

    def choices(self, changelist: Any) -> Iterator[dict[str, Any]]:
        mine = [self.quick_param, self.from_param, self.to_param]
        quick = self._param(self.quick_param)
        custom = not quick and any(self._param(p) for p in mine[1:])
        yield {"selected": not quick and not custom, "display": "Any time",
               "query_string": changelist.get_query_string(remove=mine)}
        for value, label, _ in WINDOWS:
            yield {"selected": quick == value, "display": label,
                   "query_string": changelist.get_query_string({self.quick_param: value},
                                                               mine[1:])}

    def form_context(self) -> dict[str, Any]:
        """What the custom-range form shows: its values, and the request's other
        parameters as hidden fields (so applying a range keeps the other filters)."""
        skip = {self.quick_param, self.from_param, self.to_param, "p", "e"}
        return {
            "from_param": self.from_param, "to_param": self.to_param,
            "from_value": self._param(self.from_param),
            "to_value": self._param(self.to_param),
            "hidden": [(k, v) for k, values in self.request.GET.lists() if k not in skip
                       for v in values],
        }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        # ISO 8601 with the offset, to the microsecond: for spreadsheets and scripts, and
        # so two pushes of the same second still sort.
        return timezone.localtime(value).isoformat()
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _text(value: str) -> str:
    """Free text a caller chose (topic, error, key, user ids): a leading formula
    character gets a ``'`` so a spreadsheet shows it instead of running it."""
    return f"'{value}" if value.startswith(_FORMULA_START) else value


def csv_row(log: PushLog) -> list[str]:
    return [
        log.id, log.status, log.client.name if log.client else "console",
        _cell(log.created_at), _cell(log.published_at), _cell(log.broadcast),
        str(log.target_count), _text(" ".join(log.users)), _text(log.topic or ""),
        _text(log.idempotency_key or ""), str(log.payload_bytes), str(log.delivered),
        str(log.acked), log.accepted_node or "", _text(log.error or ""),
    ]


class _Line:
    """A file-like object whose ``write`` returns what it was given (for csv.writer)."""

    def write(self, value: str) -> str:
        return value


def csv_rows(queryset: QuerySet[PushLog], *, limit: int = EXPORT_MAX_ROWS
             ) -> Iterator[str]:
    """The header, then one CSV line per push of ``queryset`` (at most ``limit``), then,
    if there were more, a last line saying the export was cut."""
    writer = csv.writer(_Line())
    yield writer.writerow(CSV_HEADER)
    rows: Iterable[PushLog] = (queryset.select_related("client").defer("data_json")
                               [:limit + 1].iterator(chunk_size=EXPORT_CHUNK))
    for n, log in enumerate(rows):
        if n == limit:
            yield writer.writerow([f"# cut at {limit} rows: narrow the filters"])
            return
        yield writer.writerow(csv_row(log))
