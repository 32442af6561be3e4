package api_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/node"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/signal"
)

const inboundSecret = "inbound-secret-for-tests"

// postInbound posts body to /v1/platform/inbound, signed with sig (""
// signs it with the node's secret).
func postInbound(t *testing.T, e *env, body []byte, sig string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", e.base+"/v1/platform/inbound", strings.NewReader(string(body)))
	if sig == "" {
		sig = platform.Sign([]byte(inboundSecret), body)
	}
	if sig != "none" {
		req.Header.Set("X-Platform-Signature", sig)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

// results maps envelope id → "accepted" or the error code.
func results(out map[string]any) map[string]string {
	m := map[string]string{}
	rs, _ := out["results"].([]any)
	for _, r := range rs {
		r := r.(map[string]any)
		v, _ := r["status"].(string)
		if c, _ := r["code"].(string); c != "" {
			v = c
		}
		m[r["id"].(string)] = v
	}
	return m
}

// bundleOf is the business number's bundle with one fresh one-time prekey,
// as the platform would hand it out.
func bundleOf(t *testing.T, e *env, biz string) *platform.DeviceBundle {
	t.Helper()
	up, err := e.n.Sessions().NewPreKeys(biz, 1, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &platform.DeviceBundle{DeviceID: 1, RegistrationID: up.RegistrationID, IdentityKey: up.IdentityKey,
		SignedPreKey: up.SignedPreKey, PreKey: &up.PreKeys[0]}
}

func envelope(t *testing.T, d *signal.Device, from, biz, id, text string, bundle *platform.DeviceBundle) map[string]any {
	t.Helper()
	pt, _ := json.Marshal(platform.Plaintext{ID: id, From: from, TS: time.Now().Unix(), Type: "text", Text: &platform.TextBody{Body: text}})
	ct, err := d.Write(biz, bundle, pt)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]any{"id": id, "from": from, "device_id": d.ID, "to": biz, "type": ct.Type, "ciphertext": base64.StdEncoding.EncodeToString(ct.Body)}
}

func envelopes(envs ...map[string]any) []byte {
	b, _ := json.Marshal(map[string]any{"envelopes": envs})
	return b
}

// TestInboundBadInput: whatever the platform (or someone posing as it)
// sends, each envelope gets a clear answer, the bad ones store nothing and
// the good ones in the same post are not lost.
func TestInboundBadInput(t *testing.T) {
	e := start(t, func(c *node.Config) { c.PlatformSecret = inboundSecret })
	a := e.business("A", "15550001001", "10k")
	const biz, user = "15550001001", "15550000042"
	d, err := signal.NewDevice(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	first := envelope(t, d, user, biz, "in-1", "hello", bundleOf(t, e, biz))

	// Refused whole: no signature, a wrong one, a body too large, too many
	// envelopes, not JSON. Nothing is stored.
	body := envelopes(first)
	for name, sig := range map[string]string{"no signature": "none", "wrong signature": platform.Sign([]byte("nope"), body)} {
		if code, _ := postInbound(t, e, body, sig); code != 401 {
			t.Errorf("%s: %d", name, code)
		}
	}
	// 10 MB: refused from its Content-Length, before the body is read (the
	// server may close the connection while the client is still writing).
	huge := []byte(`{"envelopes":[{"id":"` + strings.Repeat("x", 10<<20) + `"}]}`)
	req, _ := http.NewRequest("POST", e.base+"/v1/platform/inbound", bytes.NewReader(huge))
	req.Header.Set("X-Platform-Signature", platform.Sign([]byte(inboundSecret), huge))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode != 413 {
			t.Errorf("10 MB body: %d", resp.StatusCode)
		}
	} else if !strings.Contains(err.Error(), "reset") && !strings.Contains(err.Error(), "broken pipe") {
		t.Errorf("10 MB body: %v", err)
	}
	many := make([]map[string]any, 10_001)
	for i := range many {
		many[i] = map[string]any{"id": fmt.Sprint(i)}
	}
	if code, _ := postInbound(t, e, envelopes(many...), ""); code != 413 {
		t.Errorf("10,001 envelopes: %d", code)
	}
	if code, _ := postInbound(t, e, []byte(`{"envelopes":`), ""); code != 400 {
		t.Errorf("not JSON: %d", code)
	}
	if code, _ := e.do("GET", "/v1/messages/in-1", a.Token, "", ""); code != 404 {
		t.Fatalf("a refused post stored its envelope: %d", code)
	}

	// One post: the good envelope and bad ones of every kind.
	garbage := base64.StdEncoding.EncodeToString([]byte("\x33not a signal message at all"))
	bad := func(id string, mod func(m map[string]any)) map[string]any {
		m := map[string]any{"id": id, "from": user, "device_id": 1, "to": biz, "type": "msg", "ciphertext": garbage}
		mod(m)
		return m
	}
	other, _ := signal.NewDevice(1, 0)
	unknownPreKey := bundleOf(t, e, biz)
	unknownPreKey.PreKey.ID = 999_999 // a prekey Herald never made
	code, out := postInbound(t, e, envelopes(
		first,
		bad("no-from", func(m map[string]any) { delete(m, "from") }),
		bad("bad-device", func(m map[string]any) { m["device_id"] = 0 }),
		bad("bad-type", func(m map[string]any) { m["type"] = "image" }),
		bad("not-base64", func(m map[string]any) { m["ciphertext"] = "%%%" }),
		bad("garbage-msg", func(m map[string]any) {}),
		bad("garbage-pkmsg", func(m map[string]any) { m["type"] = "pkmsg" }),
		bad("no-such-business", func(m map[string]any) { m["to"] = "15559999999" }),
		envelope(t, other, "15550000043", biz, "unknown-prekey", "x", unknownPreKey),
	), "")
	want := map[string]string{"in-1": "accepted", "no-from": "bad_message", "bad-device": "bad_message", "bad-type": "bad_message",
		"not-base64": "bad_message", "garbage-msg": "bad_message", "garbage-pkmsg": "bad_message",
		"no-such-business": "unknown_business", "unknown-prekey": "bad_message"}
	got := results(out)
	if code != 200 || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%d\n got %v\nwant %v", code, got, want)
	}
	for id := range want {
		code, _ := e.do("GET", "/v1/messages/"+id, a.Token, "", "")
		if (id == "in-1") != (code == 200) {
			t.Errorf("GET %s: %d", id, code)
		}
	}

	// The same envelope again: accepted, not decrypted again (its
	// ciphertext would not decrypt twice: the message key is gone).
	if _, out := postInbound(t, e, envelopes(first), ""); results(out)["in-1"] != "accepted" {
		t.Fatalf("a repeated envelope: %v", out)
	}
	// An old ciphertext under a new id (a replay): its message key was
	// used, it does not decrypt.
	replay := map[string]any{}
	for k, v := range first {
		replay[k] = v
	}
	replay["id"] = "in-replayed"
	if _, out := postInbound(t, e, envelopes(replay), ""); results(out)["in-replayed"] != "bad_message" {
		t.Fatalf("a replayed ciphertext: %v", out)
	}
	// The session goes on: the next message decrypts.
	if _, out := postInbound(t, e, envelopes(envelope(t, d, user, biz, "in-2", "still here", nil)), ""); results(out)["in-2"] != "accepted" {
		t.Fatalf("after the bad ones: %v", out)
	}
	_, msg := e.do("GET", "/v1/messages/in-2", a.Token, "", "")
	if msg["text"].(map[string]any)["body"] != "still here" || msg["from"] != user {
		t.Fatalf("GET in-2: %v", msg)
	}
}
