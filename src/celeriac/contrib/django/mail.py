"""`EMAIL_BACKEND = "celeriac.contrib.django.mail.CeleriacEmailBackend"`: every email Django
sends goes out through a task, by the backend named in `CELERIAC_EMAIL_BACKEND` (default
SMTP), so a view never waits on the mail server."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from django.core.mail import EmailMessage, EmailMultiAlternatives
from django.core.mail.backends.base import BaseEmailBackend

DEFAULT_REAL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"


class CeleriacEmailBackend(BaseEmailBackend):
    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        from .tasks import send_email

        for message in email_messages:
            send_email.delay(message_to_dict(message))
        return len(email_messages)


def message_to_dict(message: EmailMessage) -> dict[str, Any]:
    """An email as JSON: addresses, text, alternatives, attachments (base64)."""
    attachments = []
    for attachment in message.attachments:
        filename, content, mimetype = tuple(attachment)[:3]
        data = content.encode() if isinstance(content, str) else bytes(content)
        attachments.append([filename, base64.b64encode(data).decode(), mimetype])
    return {
        "subject": str(message.subject),
        "body": str(message.body),
        "from_email": message.from_email,
        "to": list(message.to),
        "cc": list(message.cc),
        "bcc": list(message.bcc),
        "reply_to": list(message.reply_to),
        "headers": dict(message.extra_headers),
        "alternatives": [list(a)[:2] for a in getattr(message, "alternatives", [])],
        "attachments": attachments,
    }


def message_from_dict(data: dict[str, Any]) -> EmailMultiAlternatives:
    message = EmailMultiAlternatives(
        subject=data["subject"],
        body=data["body"],
        from_email=data["from_email"],
        to=data["to"],
        cc=data["cc"],
        bcc=data["bcc"],
        reply_to=data["reply_to"],
        headers=data["headers"],
    )
    for content, mimetype in data["alternatives"]:
        message.attach_alternative(content, mimetype)
    for filename, content, mimetype in data["attachments"]:
        message.attach(filename, base64.b64decode(content), mimetype)
    return message
