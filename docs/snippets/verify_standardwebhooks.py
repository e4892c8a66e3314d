"""Verify a payhook delivery with the Standard Webhooks library, accepting any of your endpoint's
secrets: the old and the new one while the secret is rotated. Needs `pip install standardwebhooks`.

    python3 verify_standardwebhooks.py BODY_FILE HEADERS_JSON SECRET [SECRET ...]
        # exit 0 if the raw body and the headers (a JSON object) verify with one of the secrets
"""
import json
import sys
from typing import Optional

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def verified_event(secrets: list, body: bytes, headers: dict) -> Optional[dict]:
    """The event if the delivery verifies with any one of `secrets` (whsec_ secrets), else None.

    The library checks webhook-timestamp (5 minutes either way) and accepts a webhook-signature
    header that lists several signatures, as payhook sends while its operator rotates the secret.
    """
    for secret in secrets:
        try:
            return Webhook(secret).verify(body, headers)
        except WebhookVerificationError:
            continue
    return None


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as f:
        body = f.read()
    event = verified_event(sys.argv[3:], body, json.loads(sys.argv[2]))
    print(f"webhook-signature: ok, event {event['id']}" if event else "webhook-signature: MISMATCH")
    sys.exit(0 if event else 1)
