"""Verify a payhook delivery (Python 3, standard library only).

    python3 verify.py           # checks the test vector below: exit 0
    python3 verify.py 'BODY'    # the vector's headers against BODY: exit 1 unless identical
"""
import base64
import binascii
import hashlib
import hmac
import sys
import time
from typing import Optional

TOLERANCE_SECONDS = 5 * 60  # refuse deliveries whose timestamp is further off than this


def x_signature_valid(secret: str, body: bytes, headers: dict, now: Optional[float] = None) -> bool:
    """X-Signature = hex HMAC-SHA256(secret as UTF-8, body ++ X-Nonce ++ X-Timestamp)."""
    nonce, timestamp = headers.get("x-nonce", ""), headers.get("x-timestamp", "")
    if not timestamp.isdigit():
        return False
    now = time.time() if now is None else now
    if abs(now - int(timestamp) / 1000) > TOLERANCE_SECONDS:
        return False
    message = body + nonce.encode() + timestamp.encode()
    expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), headers.get("x-signature", "").encode())


def standard_webhooks_key(secret: str) -> bytes:
    """For whsec_ secrets the key is the base64-decoded remainder, otherwise the UTF-8 bytes."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):], validate=True)
        except binascii.Error:
            pass
    return secret.encode()


def webhook_signature_valid(secret: str, body: bytes, headers: dict, now: Optional[float] = None) -> bool:
    """webhook-signature = v1,base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")."""
    msg_id, timestamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not timestamp.isdigit():
        return False
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    message = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(standard_webhooks_key(secret), message, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    # The header may carry several space-separated signatures; one match is enough.
    return any(hmac.compare_digest(expected.encode(), s.encode()) for s in headers.get("webhook-signature", "").split())


# Test vector, made with payhook's own signing code.
SECRET = "whsec_c2FuZGJveC1lbmRwb2ludC1zZWNyZXQ="
BODY = '{"id":"evt_01K3FQ4T8Z6N2WJ5X7R9MBCDEH","type":"payment.succeeded","provider":"dryad","account":"dryad-main","provider_trade_no":"202508251430001234567890","merchant_order_no":"20250825001","refund_no":null,"amount":10001,"refund_amount":null,"refunded_total":null,"currency":"CNY","channel":"WX_PAGE","channel_trade_no":"4200002961202508250001","business_params":null,"occurred_at":"2025-08-25T06:35:00Z","received_at":"2025-08-25T06:35:00.123Z","raw":{"subject":"测试商品"}}'
HEADERS = {
    "x-signature": "8c019ab3c60d110c6a0d95b024664a186c7e097739599de2dee2905424d58f68",
    "x-nonce": "01K3FQ4T9B2C3D4E5F6G7H8J9K",
    "x-timestamp": "1756103700123",
    "webhook-id": "evt_01K3FQ4T8Z6N2WJ5X7R9MBCDEH",
    "webhook-timestamp": "1756103700",
    "webhook-signature": "v1,f49tZiOWIKp58G11qwByPw0oFDJx9IrQMsPy6JCjx/w=",
}

if __name__ == "__main__":
    body = (sys.argv[1] if len(sys.argv) > 1 else BODY).encode()
    now = 1756103700  # the vector's own time; a real handler passes nothing (the current time)
    x_ok = x_signature_valid(SECRET, body, HEADERS, now)
    webhook_ok = webhook_signature_valid(SECRET, body, HEADERS, now)
    print(f"X-Signature: {'ok' if x_ok else 'MISMATCH'}, webhook-signature: {'ok' if webhook_ok else 'MISMATCH'}")
    sys.exit(0 if x_ok and webhook_ok else 1)
