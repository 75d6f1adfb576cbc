"""``{% load console_ids %}``: ``{% id_tag value url %}`` shows an id as ``console.ids`` does."""

from __future__ import annotations

from django import template
from django.utils.safestring import SafeString

from console.ids import id_html, short_id

register = template.Library()


@register.simple_tag
def id_tag(value: str, url: str = "") -> SafeString:
    return id_html(value, url=url or None)


@register.filter(name="short_id")
def short_id_filter(value: str) -> str:
    return short_id(value)
