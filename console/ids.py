"""How the console shows an id: start and end, the whole id in a title, and a copy button.

Push ids start with their acceptance time in milliseconds, so pushes of the same minute share
their first characters; the end (random) is what tells two apart. Ids are shown exactly as
stored: never upper- or lower-cased (user ids are case-sensitive), see ``.console-id`` in
``static/console/console.css``.
"""

from __future__ import annotations

from django.utils.html import format_html
from django.utils.safestring import SafeString

#: Ids up to this long are shown whole.
SHORT_ID_MAX = 16
HEAD, TAIL = 6, 7


def short_id(value: str) -> str:
    """``01a22d…f871569``: the start and the end of a long id; a short one whole."""
    value = str(value)
    if len(value) <= SHORT_ID_MAX:
        return value
    return f"{value[:HEAD]}…{value[-TAIL:]}"


def copy_button(value: str) -> SafeString:
    """A button that copies ``value`` (``static/console/console.js``)."""
    return format_html(
        '<button type="button" class="console-copy" data-copy-text="{0}" '
        'title="Copy {0}" aria-label="Copy {0}">copy</button>', value)


def id_html(value: str, *, url: str | None = None) -> SafeString:
    """The id shortened, whole in its title, linked to ``url`` if given, with a copy button."""
    value = str(value)
    if url:
        text = format_html('<a class="console-id console-mono" href="{}" title="{}">{}</a>',
                           url, value, short_id(value))
    else:
        text = format_html('<span class="console-id console-mono" title="{}">{}</span>',
                           value, short_id(value))
    return format_html('<span class="console-idbox">{}{}</span>', text, copy_button(value))
