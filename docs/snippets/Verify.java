// Verify a payhook delivery (Java 17+, JDK only).
//
//   java Verify.java           # checks the test vector below: exit 0
//   java Verify.java 'BODY'    # the vector's headers against BODY: exit 1 unless identical

import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.MessageDigest;
import java.util.Base64;
import java.util.HexFormat;
import java.util.Map;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

public final class Verify {
    /** Refuse deliveries whose timestamp is further off than this. */
    static final long TOLERANCE_SECONDS = 5 * 60;

    static byte[] hmacSha256(byte[] key, byte[]... parts) throws GeneralSecurityException {
        Mac mac = Mac.getInstance("HmacSHA256");
        mac.init(new SecretKeySpec(key, "HmacSHA256"));
        for (byte[] part : parts) {
            mac.update(part);
        }
        return mac.doFinal();
    }

    static boolean constantTimeEquals(String a, String b) {
        return MessageDigest.isEqual(a.getBytes(StandardCharsets.UTF_8), b.getBytes(StandardCharsets.UTF_8));
    }

    /** X-Signature = hex HMAC-SHA256(secret as UTF-8, body ++ X-Nonce ++ X-Timestamp); headers lower-case. */
    static boolean xSignatureValid(String secret, byte[] body, Map<String, String> headers, long nowMillis)
            throws GeneralSecurityException {
        String nonce = headers.getOrDefault("x-nonce", "");
        String timestamp = headers.getOrDefault("x-timestamp", "");
        if (!timestamp.matches("[0-9]{1,18}")
                || Math.abs(nowMillis - Long.parseLong(timestamp)) > TOLERANCE_SECONDS * 1000) {
            return false;
        }
        byte[] mac = hmacSha256(secret.getBytes(StandardCharsets.UTF_8), body,
                nonce.getBytes(StandardCharsets.UTF_8), timestamp.getBytes(StandardCharsets.UTF_8));
        return constantTimeEquals(HexFormat.of().formatHex(mac), headers.getOrDefault("x-signature", ""));
    }

    /** For whsec_ secrets the key is the base64-decoded remainder, otherwise the UTF-8 bytes. */
    static byte[] standardWebhooksKey(String secret) {
        if (secret.startsWith("whsec_")) {
            try {
                return Base64.getDecoder().decode(secret.substring("whsec_".length()));
            } catch (IllegalArgumentException notBase64) {
                // fall through: the whole secret's bytes
            }
        }
        return secret.getBytes(StandardCharsets.UTF_8);
    }

    /** webhook-signature = v1,base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}"). */
    static boolean webhookSignatureValid(String secret, byte[] body, Map<String, String> headers, long nowMillis)
            throws GeneralSecurityException {
        String id = headers.getOrDefault("webhook-id", "");
        String timestamp = headers.getOrDefault("webhook-timestamp", "");
        if (!timestamp.matches("[0-9]{1,15}")
                || Math.abs(nowMillis / 1000.0 - Long.parseLong(timestamp)) > TOLERANCE_SECONDS) {
            return false;
        }
        byte[] prefix = (id + "." + timestamp + ".").getBytes(StandardCharsets.UTF_8);
        String expected = "v1," + Base64.getEncoder().encodeToString(hmacSha256(standardWebhooksKey(secret), prefix, body));
        // The header may carry several space-separated signatures; one match is enough.
        for (String signature : headers.getOrDefault("webhook-signature", "").split(" ")) {
            if (constantTimeEquals(expected, signature)) {
                return true;
            }
        }
        return false;
    }

    // Test vector, made with payhook's own signing code.
    static final String SECRET = "whsec_c2FuZGJveC1lbmRwb2ludC1zZWNyZXQ=";
    static final String BODY = """
        {"id":"evt_01K3FQ4T8Z6N2WJ5X7R9MBCDEH","type":"payment.succeeded","provider":"dryad","account":"dryad-main","provider_trade_no":"202508251430001234567890","merchant_order_no":"20250825001","refund_no":null,"amount":10001,"refund_amount":null,"refunded_total":null,"currency":"CNY","channel":"WX_PAGE","channel_trade_no":"4200002961202508250001","business_params":null,"occurred_at":"2025-08-25T06:35:00Z","received_at":"2025-08-25T06:35:00.123Z","raw":{"subject":"测试商品"}}""";
    static final Map<String, String> HEADERS = Map.of(
            "x-signature", "8c019ab3c60d110c6a0d95b024664a186c7e097739599de2dee2905424d58f68",
            "x-nonce", "01K3FQ4T9B2C3D4E5F6G7H8J9K",
            "x-timestamp", "1756103700123",
            "webhook-id", "evt_01K3FQ4T8Z6N2WJ5X7R9MBCDEH",
            "webhook-timestamp", "1756103700",
            "webhook-signature", "v1,f49tZiOWIKp58G11qwByPw0oFDJx9IrQMsPy6JCjx/w=");

    public static void main(String[] args) throws GeneralSecurityException {
        byte[] body = (args.length > 0 ? args[0] : BODY).getBytes(StandardCharsets.UTF_8);
        long now = 1756103700_000L; // the vector's own time; a real handler passes System.currentTimeMillis()
        boolean xOk = xSignatureValid(SECRET, body, HEADERS, now);
        boolean webhookOk = webhookSignatureValid(SECRET, body, HEADERS, now);
        System.out.println("X-Signature: " + (xOk ? "ok" : "MISMATCH")
                + ", webhook-signature: " + (webhookOk ? "ok" : "MISMATCH"));
        System.exit(xOk && webhookOk ? 0 : 1);
    }
}
