"""Request paths and queries, and the templates that name them in messages and metrics."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Final

__all__ = ["Route", "at_most_one", "exactly_one", "history_route", "path_id"]

# Query parameters that name records, not people: URLs with only these may be memoised.
_ID_PARAMS: Final = frozenset({"externalId", "externalSessionId"})


@dataclass(frozen=True, slots=True)
class Route:
    """A request path with its query, and the template that names it in messages and metrics."""

    base_template: str
    path: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def template(self) -> str:
        # Query values are elided: they are ids, but participantEmail is a patient's address.
        query = "&".join(f"{name}=…" for name in self.params)
        return f"{self.base_template}?{query}" if query else self.base_template

    @property
    def memoizable(self) -> bool:
        """Whether the URL holds nothing but ids and external ids (no e-mail, no dates)."""
        return self.params.keys() <= _ID_PARAMS

    @property
    def url(self) -> str:
        """The path and query, relative to the client's base URL."""
        path = self.path[1:]
        return f"{path}?{urllib.parse.urlencode(self.params)}" if self.params else path

    def with_params(self, **params: str) -> Route:
        return Route(self.base_template, self.path, {**self.params, **params})


def history_route(
    month: date | None,
    start: date | None,
    end: date | None,
    host_user_id: int | None,
    participant_email: str | None,
) -> Route:
    if month is not None and (start is not None or end is not None):
        raise ValueError("give either month or start/end: SecureVideo ignores start/end")
    if host_user_id is None:
        route = Route("/history", "/history")
    else:
        route = Route("/history/{hostUserId}", f"/history/{path_id(host_user_id)}")
    params: dict[str, str] = {}
    if month is not None:
        params["month"] = month.replace(day=1).isoformat()
    if start is not None:
        params["startDt"] = start.isoformat()
    if end is not None:
        params["endDt"] = end.isoformat()
    if participant_email is not None:
        params["participantEmail"] = participant_email
    return route.with_params(**params)


def path_id(value: int) -> int:
    # 0 is SecureVideo's "look it up by external id" marker, so it is never a real id here.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("ids in a SecureVideo path are positive integers")
    return value


def exactly_one(**choices: object) -> None:
    given = [name for name, value in choices.items() if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(choices)}")


def at_most_one(**choices: object) -> None:
    given = [name for name, value in choices.items() if value is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one of {', '.join(choices)}")
