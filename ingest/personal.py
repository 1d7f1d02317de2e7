"""Personal data in free text: one email pattern, and a mask for one event's own customer.

An API error message or an attempt's history is free text that may quote the customer:
``customer Carol Danvers <carol@example.com> is not valid``. Two tools find it:

- :data:`EMAIL_PATTERN`, wider than a valid address on purpose: any local part (quotes and
  apostrophes included, or a quoted string) and any host (``localhost``, a name without a
  dot, an ``[ip]`` literal). Masking too much costs a character; too little leaks a person.
- :class:`LetterMask`, built from one event's body: that customer's own email and name,
  wherever and however they are cased in a message, even where no pattern would see a name.

The log (:func:`ingest.logs.scrub`), the dead-letter store (what the worker writes) and
the console (what it shows) all use these, so they agree on what is personal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

EMAIL_FIELDS = frozenset({"email", "customer_email"})
NAME_FIELDS = frozenset({"name", "customer_name"})

# Local part: a quoted string, or a run of anything an address or a typo could hold but
# whitespace, brackets and separators. Host: an [ip literal] or dot-separated labels, one
# label enough (``localhost``); a sentence's final dot stays outside.
EMAIL_PATTERN = re.compile(
    r"""(?P<local>"[^"\r\n]*"|[^\s<>()\[\]{},;:@"]+)"""
    r"""@(?P<host>\[[^\]\s]*\]|[\w\-]+(?:\.[\w\-]+)*)"""
)
_MIN_NAME_PART = 3  # shorter name parts ("Al", "de") would mask ordinary words


def mask_email(value: str) -> str:
    """``jane@example.com`` -> ``j***@example.com``; the host stays (rarely personal, and what
    an operator needs to spot a pattern)."""
    local, at, host = value.rpartition("@")
    if not at:
        return mask_name(value)
    return f"{local[:1]}***@{host}"


def mask_name(value: str) -> str:
    """``Jane Doe`` -> ``J*** D***``."""
    return " ".join(f"{word[:1]}***" for word in value.split())


def mask_text(value: str) -> str:
    """Every email address inside free text masked as :func:`mask_email` masks one."""
    return EMAIL_PATTERN.sub(lambda m: mask_email(m.group(0)), value)


def _strings(value: Any, fields: frozenset[str], key: str | None = None) -> Iterable[str]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(v, fields, str(k))
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, fields, key)
    elif isinstance(value, str) and key in fields and value.strip():
        yield value


@dataclass(frozen=True, slots=True)
class LetterMask:
    """One event's customer (emails and names from its body), to hide in free text."""

    emails: tuple[str, ...] = ()
    names: tuple[str, ...] = ()

    @classmethod
    def of(cls, body: Any) -> LetterMask:
        """The mask for an event body (a dict at any depth, or its JSON text); a body that
        is not JSON gives an empty mask, and :data:`EMAIL_PATTERN` still applies."""
        if isinstance(body, str | bytes):
            try:
                body = json.loads(body)
            except ValueError:
                body = {}
        return cls(
            emails=tuple(dict.fromkeys(_strings(body, EMAIL_FIELDS))),
            names=tuple(dict.fromkeys(_strings(body, NAME_FIELDS))),
        )

    def mask(self, text: str) -> str:
        """For a page: ``j***@host`` for every email, ``C*** D***`` for the name."""
        return self._apply(text, email=mask_email, name=mask_name)

    def redact(self, text: str, placeholder: str) -> str:
        """For storage and logs: every email and the name replaced by ``placeholder``."""
        return self._apply(text, email=lambda _: placeholder, name=lambda _: placeholder)

    def _apply(self, text: str, *, email: Callable[[str], str], name: Callable[[str], str]) -> str:
        for own in self.emails:  # before the pattern, which might split an odd address
            text = re.sub(re.escape(own), lambda m: email(m.group(0)), text, flags=re.IGNORECASE)
        text = EMAIL_PATTERN.sub(lambda m: email(m.group(0)), text)
        names = self._name_pattern()
        return text if names is None else names.sub(lambda m: name(m.group(0)), text)

    def _name_pattern(self) -> re.Pattern[str] | None:
        # The whole name (any spacing), then each part long enough to be a name and not a
        # word: "Danvers, Carol" and "CAROL" are hers too.
        wholes = [r"\s+".join(map(re.escape, n.split())) for n in self.names]
        parts = {p for n in self.names for p in re.findall(r"\w+", n) if len(p) >= _MIN_NAME_PART}
        choices = [w for w in wholes if w] + [re.escape(p) for p in sorted(parts, key=len)[::-1]]
        if not choices:
            return None
        return re.compile(r"(?<!\w)(?:" + "|".join(choices) + r")(?!\w)", re.IGNORECASE)
