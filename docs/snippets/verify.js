// Verify a payhook delivery (Node.js 16+, no dependencies).
//
//   node verify.js           # checks the test vector below: exit 0
//   node verify.js 'BODY'    # the vector's headers against BODY: exit 1 unless identical
"use strict";
const crypto = require("node:crypto");

const TOLERANCE_SECONDS = 5 * 60; // refuse deliveries whose timestamp is further off than this

function safeEqual(a, b) {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

// X-Signature = hex HMAC-SHA256(secret as UTF-8, body ++ X-Nonce ++ X-Timestamp).
// `body` is the raw request body as a Buffer: never a re-serialized JSON object.
function xSignatureValid(secret, body, headers, now = Date.now() / 1000) {
  const nonce = headers["x-nonce"] || "";
  const timestamp = headers["x-timestamp"] || "";
  if (!/^[0-9]+$/.test(timestamp)) return false;
  if (Math.abs(now - Number(timestamp) / 1000) > TOLERANCE_SECONDS) return false;
  const expected = crypto
    .createHmac("sha256", Buffer.from(secret, "utf8"))
    .update(body)
    .update(nonce, "utf8")
    .update(timestamp, "utf8")
    .digest("hex");
  return safeEqual(expected, headers["x-signature"] || "");
}

// For whsec_ secrets the key is the base64-decoded remainder, otherwise the UTF-8 bytes.
function standardWebhooksKey(secret) {
  const rest = secret.startsWith("whsec_") ? secret.slice("whsec_".length) : null;
  if (rest !== null && /^[A-Za-z0-9+/]*={0,2}$/.test(rest) && rest.length % 4 === 0) {
    return Buffer.from(rest, "base64");
  }
  return Buffer.from(secret, "utf8");
}

// webhook-signature = v1,base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}").
function webhookSignatureValid(secret, body, headers, now = Date.now() / 1000) {
  const id = headers["webhook-id"] || "";
  const timestamp = headers["webhook-timestamp"] || "";
  if (!/^[0-9]+$/.test(timestamp)) return false;
  if (Math.abs(now - Number(timestamp)) > TOLERANCE_SECONDS) return false;
  const mac = crypto
    .createHmac("sha256", standardWebhooksKey(secret))
    .update(`${id}.${timestamp}.`, "utf8")
    .update(body)
    .digest("base64");
  // The header may carry several space-separated signatures; one match is enough.
  const candidates = (headers["webhook-signature"] || "").split(" ").filter(Boolean);
  return candidates.some((sig) => safeEqual(`v1,${mac}`, sig));
}

// Test vector, made with payhook's own signing code.
const SECRET = "whsec_c2FuZGJveC1lbmRwb2ludC1zZWNyZXQ=";
const BODY = `{"id":"evt_01K3FQ4T8Z6N2WJ5X7R9MBCDEH","type":"payment.succeeded","provider":"dryad","account":"dryad-main","provider_trade_no":"202508251430001234567890","merchant_order_no":"20250825001","refund_no":null,"amount":10001,"refund_amount":null,"refunded_total":null,"currency":"CNY","channel":"WX_PAGE","channel_trade_no":"4200002961202508250001","business_params":null,"occurred_at":"2025-08-25T06:35:00Z","received_at":"2025-08-25T06:35:00.123Z","raw":{"subject":"测试商品"}}`;
const HEADERS = {
  "x-signature": "8c019ab3c60d110c6a0d95b024664a186c7e097739599de2dee2905424d58f68",
  "x-nonce": "01K3FQ4T9B2C3D4E5F6G7H8J9K",
  "x-timestamp": "1756103700123",
  "webhook-id": "evt_01K3FQ4T8Z6N2WJ5X7R9MBCDEH",
  "webhook-timestamp": "1756103700",
  "webhook-signature": "v1,f49tZiOWIKp58G11qwByPw0oFDJx9IrQMsPy6JCjx/w=",
};

if (require.main === module) {
  const body = Buffer.from(process.argv.length > 2 ? process.argv[2] : BODY, "utf8");
  const now = 1756103700; // the vector's own time; a real handler leaves it out (the current time)
  const xOk = xSignatureValid(SECRET, body, HEADERS, now);
  const webhookOk = webhookSignatureValid(SECRET, body, HEADERS, now);
  console.log(`X-Signature: ${xOk ? "ok" : "MISMATCH"}, webhook-signature: ${webhookOk ? "ok" : "MISMATCH"}`);
  process.exit(xOk && webhookOk ? 0 : 1);
}

module.exports = { xSignatureValid, webhookSignatureValid, standardWebhooksKey };
