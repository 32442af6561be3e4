package signal_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/signal"
	"github.com/heraldhq/herald/internal/testutil"
)

// TestInteropWithJavaScriptLibsignal sends through Herald's Signal layer and
// platform client to the conformance platform, whose recipients are the
// JavaScript libsignal: every envelope must decrypt there, multi-device users
// included, and a bad_message (lost session) must heal through a session reset.
func TestInteropWithJavaScriptLibsignal(t *testing.T) {
	script := testutil.ConformanceScript(t)
	base, _ := testutil.StartListening(t, 3*time.Minute, script,
		"--listen", "127.0.0.1:0", "--secret", "s3cret", "--users", "100", "--reset-rate", "0.3")
	ctx := context.Background()
	client, err := platform.NewClient(platform.ClientOptions{BaseURL: base, Secret: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	id, _ := signal.NewIdentity("15550009999")

	var users []string
	for i := 0; i < 12; i++ { // devices per user: 1 + i%3; index 49 would be unknown
		users = append(users, fmt.Sprintf("1777%07d", i))
	}
	users = append(users, "17770000049")
	keys, err := client.QueryKeys(ctx, users)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys.Unknown) != 1 || keys.Unknown[0] != "17770000049" {
		t.Fatalf("unknown users: %v", keys.Unknown)
	}
	type dev struct {
		user string
		id   uint32
	}
	sessions := map[dev]*signal.Built{}
	for _, u := range keys.Users {
		for _, d := range u.Devices {
			b, err := signal.DecodeBundle(u.User, d)
			if err != nil {
				t.Fatal(err)
			}
			built, err := signal.BuildSession(id, b, nil, false)
			if err != nil {
				t.Fatal(err)
			}
			sessions[dev{u.User, d.DeviceID}] = built
		}
	}
	if len(sessions) < 20 {
		t.Fatalf("expected multi-device users, got %d devices", len(sessions))
	}
	send := func(d dev, n int, round int) []platform.Result {
		var envs []platform.Envelope
		var pts [][]byte
		for i := 0; i < n; i++ {
			msgID := fmt.Sprintf("m%d-%s-%d-%d", round, d.user, d.id, i)
			pt, _ := json.Marshal(platform.Plaintext{ID: msgID, From: id.Phone, TS: time.Now().Unix(), Type: "text",
				Text: &platform.TextBody{Body: fmt.Sprintf("héllo %d ✓", i)}})
			pts = append(pts, pt)
			envs = append(envs, platform.Envelope{ID: msgID, From: id.Phone, To: d.user, DeviceID: d.id})
		}
		cts, err := signal.EncryptBatch(sessions[d].Record, pts)
		if err != nil {
			t.Fatal(err)
		}
		for i := range envs {
			envs[i].Type = cts[i].Type
			envs[i].Ciphertext = base64.StdEncoding.EncodeToString(cts[i].Body)
		}
		res, err := client.Send(ctx, envs)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	// One message per device per request (the engine's "waves"): a message after
	// one that hit a lost session would otherwise arrive for a session that is gone.
	resets := 0
	for d := range sessions {
		for i := 0; i < 3; i++ {
			r := send(d, 1, i)[0]
			if r.Status == platform.StatusAccepted {
				continue
			}
			if r.Code != platform.CodeBadMessage {
				t.Fatalf("%v: %+v", d, r)
			}
			// Session reset: fresh bundle, new session, resend the same message.
			resets++
			k, err := client.QueryKeys(ctx, []string{d.user})
			if err != nil {
				t.Fatal(err)
			}
			for _, bd := range k.Users[0].Devices {
				if bd.DeviceID == d.id {
					b, _ := signal.DecodeBundle(d.user, bd)
					sessions[d], err = signal.BuildSession(id, b, sessions[d].IdentityKey, false)
					if err != nil {
						t.Fatal(err)
					}
				}
			}
			if r := send(d, 1, i)[0]; r.Status != platform.StatusAccepted {
				t.Fatalf("after reset %v: %+v", d, r)
			}
		}
	}
	if resets == 0 {
		t.Fatal("the conformance platform injected no bad_message; the reset path went untested")
	}
	resp, err := http.Get(base + "/v1/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var stats struct {
		Decrypted   int            `json:"decrypted"`
		Failures    map[string]int `json:"failures"`
		Mismatches  int            `json:"mismatches"`
		AuthMissing int            `json:"auth_missing"`
	}
	json.NewDecoder(resp.Body).Decode(&stats)
	t.Logf("conformance stats: %+v (resets %d)", stats, resets)
	if len(stats.Failures) != 0 || stats.Mismatches != 0 || stats.AuthMissing != 0 || stats.Decrypted < 3*len(sessions) {
		t.Fatalf("interop failed: %+v", stats)
	}
}
