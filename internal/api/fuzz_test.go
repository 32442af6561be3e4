package api_test

import (
	"context"
	"encoding/json"
	"io"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/heraldhq/herald/internal/node"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/platform/sim"
)

func fuzzNode(f *testing.F) (*node.Node, string, string) {
	n, err := node.New(node.Config{DataDir: f.TempDir(), Listen: "127.0.0.1:0", Out: io.Discard, AdminToken: "admin-token-for-tests",
		PlatformSecret: fuzzSecret, Sim: sim.Options{Users: 1000}})
	if err != nil {
		f.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { n.Close() })
	return n, n.DemoToken, n.DemoPhoneNumberID
}

func handle(n *node.Node, method, path, token, ct string, body []byte) int {
	var ctx fasthttp.RequestCtx
	ctx.Request.Header.SetMethod(method)
	ctx.Request.SetRequestURI(path)
	ctx.Request.Header.Set("Authorization", "Bearer "+token)
	ctx.Request.Header.SetContentType(ct)
	ctx.Request.SetBody(body)
	n.API.Handle(&ctx)
	return ctx.Response.StatusCode()
}

// FuzzCampaignNDJSON: any upload gets a well-formed answer (200, 4xx, 429) and never a panic or a 5xx.
func FuzzCampaignNDJSON(f *testing.F) {
	n, tok, pn := fuzzNode(f)
	f.Add([]byte("{\"name\":\"x\",\"template\":{\"body\":\"Hi {{a}}\"}}\n{\"to\":\"15550000001\",\"vars\":{\"a\":\"b\"}}\n"))
	f.Add([]byte("{\"template\":{\"body\":\"{{\"}}\n{\"to\":1}\n\xff\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		if st := handle(n, "POST", "/v1/"+pn+"/campaigns", tok, "application/x-ndjson", body); st >= 500 {
			t.Fatalf("status %d for %q", st, body)
		}
	})
}

// FuzzCampaignJSON: any JSON campaign upload gets a well-formed answer, never
// a panic or a 5xx.
func FuzzCampaignJSON(f *testing.F) {
	n, tok, pn := fuzzNode(f)
	f.Add([]byte(`{"name":"x","template":{"body":"Hi {{a}}"},"recipients":[{"to":"15550000001","vars":{"a":"b"}}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		if st := handle(n, "POST", "/v1/"+pn+"/campaigns", tok, "application/json", body); st >= 500 {
			t.Fatalf("status %d", st)
		}
	})
}

// FuzzSendMessage: any single-send body gets a well-formed answer, never a
// panic or a 5xx.
func FuzzSendMessage(f *testing.F) {
	n, tok, pn := fuzzNode(f)
	f.Add([]byte(`{"messaging_product":"whatsapp","to":"+1 555 000 0001","type":"text","text":{"body":"hi"},"ttl_seconds":60}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		if st := handle(n, "POST", "/v1/"+pn+"/messages", tok, "application/json", body); st >= 500 {
			t.Fatalf("status %d", st)
		}
	})
}

const fuzzSecret = "fuzz-platform-secret"

// FuzzPlatformEvents: a body signed with the node's real platform secret
// reaches the events handler, which answers 200 or 4xx and never panics or
// fails with 5xx; the same body signed with another secret is refused 401.
func FuzzPlatformEvents(f *testing.F) {
	n, _, _ := fuzzNode(f)
	f.Add([]byte(`{"events":[{"type":"decrypt_failed","id":"x","user":"1555","device_id":200}]}`))
	f.Add([]byte(`{"events":[{"type":"delivered","id":"01J0000000000000000000000","user":"15550000001","device_id":1,"ts":1}]}`))
	f.Add([]byte(`{"events":[{"type":"report","business":"15550100000","user":"15550000001","reason":"block"}]}`))
	post := func(body []byte, secret string) int {
		st, _ := signedPost(n, "/v1/platform/events", body, secret)
		return st
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if st := post(body, fuzzSecret); st == 401 || st >= 500 {
			t.Fatalf("a body signed with the real secret: status %d", st)
		}
		if st := post(body, "unknown"); st != 401 {
			t.Fatalf("a wrongly signed body: status %d, want 401", st)
		}
	})
}

// FuzzPlatformInbound: whatever a signed inbound post holds, Herald answers
// it (never 401 or 5xx, never a panic) and every envelope gets a result;
// wrongly signed, it is 401.
func FuzzPlatformInbound(f *testing.F) {
	n, _, _ := fuzzNode(f)
	f.Add([]byte(`{"envelopes":[{"id":"a","from":"15550000001","device_id":1,"to":"15550100000","type":"msg","ciphertext":"MwoAAA=="}]}`))
	f.Add([]byte(`{"envelopes":[{"id":"b","from":"15550000001","device_id":2,"to":"15550100000","type":"pkmsg","ciphertext":"Mwg="}]}`))
	f.Add([]byte(`{"envelopes":[{"id":"","type":"x"},{}]}`))
	post := func(body []byte, secret string) (int, []byte) {
		return signedPost(n, "/v1/platform/inbound", body, secret)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		st, resp := post(body, fuzzSecret)
		if st == 401 || st >= 500 {
			t.Fatalf("a body signed with the real secret: status %d", st)
		}
		if st == 200 {
			var in, out struct {
				Envelopes []json.RawMessage `json:"envelopes"`
				Results   []json.RawMessage `json:"results"`
			}
			json.Unmarshal(body, &in)
			json.Unmarshal(resp, &out)
			if len(out.Results) != len(in.Envelopes) {
				t.Fatalf("%d envelopes, %d results", len(in.Envelopes), len(out.Results))
			}
		}
		if st, _ := post(body, "unknown"); st != 401 {
			t.Fatalf("a wrongly signed body: status %d, want 401", st)
		}
	})
}

// signedPost hands the node's API a POST of body to path, signed with
// secret as the platform signs, and returns the answer.
func signedPost(n *node.Node, path string, body []byte, secret string) (int, []byte) {
	var ctx fasthttp.RequestCtx
	ctx.Request.Header.SetMethod("POST")
	ctx.Request.SetRequestURI(path)
	ctx.Request.SetBody(body)
	ctx.Request.Header.Set("X-Platform-Signature", platform.Sign([]byte(secret), body))
	n.API.Handle(&ctx)
	return ctx.Response.StatusCode(), ctx.Response.Body()
}
