// Verify a payhook delivery (Go, standard library only).
//
//	go run verify.go           # checks the test vector below: exit 0
//	go run verify.go 'BODY'    # the vector's headers against BODY: exit 1 unless identical
package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// Refuse deliveries whose timestamp is further off than this.
const toleranceSeconds = 5 * 60

func withinTolerance(timestamp float64, now time.Time) bool {
	return math.Abs(float64(now.UnixMilli())/1000-timestamp) <= toleranceSeconds
}

// XSignatureValid checks X-Signature = hex HMAC-SHA256(secret as UTF-8, body ++ X-Nonce ++ X-Timestamp).
// body is the raw request body, read before any JSON decoding.
func XSignatureValid(secret string, body []byte, h http.Header, now time.Time) bool {
	timestamp := h.Get("X-Timestamp")
	ms, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil || !withinTolerance(float64(ms)/1000, now) {
		return false
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	mac.Write([]byte(h.Get("X-Nonce")))
	mac.Write([]byte(timestamp))
	expected := hex.EncodeToString(mac.Sum(nil))
	return hmac.Equal([]byte(expected), []byte(h.Get("X-Signature")))
}

// StandardWebhooksKey: for whsec_ secrets the base64-decoded remainder, otherwise the UTF-8 bytes.
func StandardWebhooksKey(secret string) []byte {
	if strings.HasPrefix(secret, "whsec_") {
		if key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_")); err == nil {
			return key
		}
	}
	return []byte(secret)
}

// WebhookSignatureValid checks webhook-signature = v1,base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}").
func WebhookSignatureValid(secret string, body []byte, h http.Header, now time.Time) bool {
	timestamp := h.Get("Webhook-Timestamp")
	seconds, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil || !withinTolerance(float64(seconds), now) {
		return false
	}
	mac := hmac.New(sha256.New, StandardWebhooksKey(secret))
	mac.Write([]byte(h.Get("Webhook-Id") + "." + timestamp + "."))
	mac.Write(body)
	expected := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
	// The header may carry several space-separated signatures; one match is enough.
	for _, sig := range strings.Fields(h.Get("Webhook-Signature")) {
		if hmac.Equal([]byte(expected), []byte(sig)) {
			return true
		}
	}
	return false
}

// Test vector, made with payhook's own signing code.
const secret = "whsec_c2FuZGJveC1lbmRwb2ludC1zZWNyZXQ="
const vectorBody = `{"id":"evt_01K3FQ4T8Z6N2WJ5X7R9MBCDEH","type":"payment.succeeded","provider":"dryad","account":"dryad-main","provider_trade_no":"202508251430001234567890","merchant_order_no":"20250825001","refund_no":null,"amount":10001,"refund_amount":null,"refunded_total":null,"currency":"CNY","channel":"WX_PAGE","channel_trade_no":"4200002961202508250001","business_params":null,"occurred_at":"2025-08-25T06:35:00Z","received_at":"2025-08-25T06:35:00.123Z","raw":{"subject":"测试商品"}}`

func vectorHeaders() http.Header {
	h := http.Header{}
	h.Set("X-Signature", "8c019ab3c60d110c6a0d95b024664a186c7e097739599de2dee2905424d58f68")
	h.Set("X-Nonce", "01K3FQ4T9B2C3D4E5F6G7H8J9K")
	h.Set("X-Timestamp", "1756103700123")
	h.Set("webhook-id", "evt_01K3FQ4T8Z6N2WJ5X7R9MBCDEH")
	h.Set("webhook-timestamp", "1756103700")
	h.Set("webhook-signature", "v1,f49tZiOWIKp58G11qwByPw0oFDJx9IrQMsPy6JCjx/w=")
	return h
}

func main() {
	body := []byte(vectorBody)
	if len(os.Args) > 1 {
		body = []byte(os.Args[1])
	}
	now := time.Unix(1756103700, 0) // the vector's own time; a real handler passes time.Now()
	xOK := XSignatureValid(secret, body, vectorHeaders(), now)
	webhookOK := WebhookSignatureValid(secret, body, vectorHeaders(), now)
	word := map[bool]string{true: "ok", false: "MISMATCH"}
	fmt.Printf("X-Signature: %s, webhook-signature: %s\n", word[xOK], word[webhookOK])
	if !xOK || !webhookOK {
		os.Exit(1)
	}
}
