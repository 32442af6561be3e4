package sim_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/platform/sim"
	"github.com/heraldhq/herald/internal/signal"
	"github.com/heraldhq/herald/internal/testutil"
)

func start(t *testing.T, opts sim.Options) (*sim.Server, *platform.Client) {
	t.Helper()
	if opts.Secret == "" {
		opts.Secret = "sekret"
	}
	s, err := sim.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() { s.Close() })
	c, err := platform.NewClient(platform.ClientOptions{BaseURL: s.URL(), Secret: opts.Secret})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return s, c
}

// envelopes builds sessions for user from fresh bundles and encrypts one message per device.
func envelopes(t *testing.T, c *platform.Client, id *signal.Identity, user, msgID string) []platform.Envelope {
	t.Helper()
	ctx := context.Background()
	k, err := c.QueryKeys(ctx, []string{user})
	if err != nil || len(k.Users) != 1 {
		t.Fatalf("keys: %v %+v", err, k)
	}
	var out []platform.Envelope
	for _, d := range k.Users[0].Devices {
		b, err := signal.DecodeBundle(user, d)
		if err != nil {
			t.Fatal(err)
		}
		built, err := signal.BuildSession(id, b, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		pt, _ := json.Marshal(platform.Plaintext{ID: msgID, From: id.Phone, Type: "text", Text: &platform.TextBody{Body: "hi"}})
		cts, _ := signal.EncryptBatch(built.Record, [][]byte{pt})
		out = append(out, platform.Envelope{ID: msgID, From: id.Phone, To: user, DeviceID: d.DeviceID, Type: cts[0].Type,
			Ciphertext: base64.StdEncoding.EncodeToString(cts[0].Body)})
	}
	return out
}

func TestDeliverDedupeAndSignedEvents(t *testing.T) {
	var mu sync.Mutex
	var got []platform.Event
	var badSig int
	evSrv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if !platform.Verify([]byte("sekret"), ctx.PostBody(), string(ctx.Request.Header.Peek("X-Platform-Signature"))) {
			badSig++
			ctx.SetStatusCode(401)
			return
		}
		var evs platform.Events
		json.Unmarshal(ctx.PostBody(), &evs)
		mu.Lock()
		got = append(got, evs.Events...)
		mu.Unlock()
	}}
	ln := listen(t)
	go evSrv.Serve(ln)
	defer evSrv.Shutdown()

	s, c := start(t, sim.Options{Users: 100, UnknownShare: -1, DevicesMin: 2, DevicesMax: 2, ReadShare: 1,
		EventsURL: "http://" + ln.Addr().String() + "/v1/platform/events", EventInterval: 5 * time.Millisecond})
	id, _ := signal.NewIdentity("15550001111")
	user := s.UserNumber(7)
	envs := envelopes(t, c, id, user, "01AAA")
	res, err := c.Send(context.Background(), append(envs, envs...)) // each twice
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Status != platform.StatusAccepted {
			t.Fatalf("%+v", r)
		}
	}
	st := s.Stats()
	if st.Decrypted != 2 || st.Duplicates != 2 || len(st.Failures) != 0 || st.Mismatches != 0 {
		t.Fatalf("stats %+v", st)
	}
	testutil.Until(t, 5*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 4 },
		func() string { mu.Lock(); defer mu.Unlock(); return fmt.Sprintf("%d events pushed, want 4", len(got)) })
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 4 || badSig != 0 {
		t.Fatalf("want 2 delivered + 2 read events, signed; got %d (bad signatures %d)", len(got), badSig)
	}
}

func TestErrorsByCode(t *testing.T) {
	s, c := start(t, sim.Options{Users: 100, UnknownShare: -1, DevicesMin: 1, DevicesMax: 1})
	ctx := context.Background()
	id, _ := signal.NewIdentity("15550001111")
	envs := envelopes(t, c, id, s.UserNumber(1), "01B")
	stale := envs[0]
	stale.DeviceID = 5
	unknown := envs[0]
	unknown.To = "19990000000"
	garbage := envs[0]
	garbage.ID = "01C"
	garbage.Ciphertext = base64.StdEncoding.EncodeToString([]byte("not signal"))
	res, err := c.Send(ctx, []platform.Envelope{stale, unknown, garbage})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{platform.CodeStaleDevices, platform.CodeUnknownUser, platform.CodeBadMessage} {
		if res[i].Code != want {
			t.Errorf("envelope %d: want %s, got %+v", i, want, res[i])
		}
	}
	if st := s.Stats(); st.Failures == nil || len(st.Failures) != 1 {
		t.Fatalf("the garbage envelope must be counted as a failure: %+v", st.Failures)
	}
}

func TestInjectedFaults(t *testing.T) {
	ctx := context.Background()
	id, _ := signal.NewIdentity("15550001111")
	cases := []struct {
		name string
		opts sim.Options
		want func(res []platform.Result, err error) bool
	}{
		{"throttled", sim.Options{ThrottleRate: 1}, func(r []platform.Result, err error) bool {
			return err == nil && r[0].Code == platform.CodeThrottled && r[0].RetryAfterMS > 0
		}},
		{"unavailable", sim.Options{UnavailableRate: 1}, func(r []platform.Result, err error) bool {
			return err == nil && r[0].Code == platform.CodeUnavailable
		}},
		{"reinstall", sim.Options{ReinstallRate: 1}, func(r []platform.Result, err error) bool {
			return err == nil && r[0].Code == platform.CodeBadMessage
		}},
		{"429", sim.Options{Status429Rate: 1}, func(r []platform.Result, err error) bool {
			var re *platform.RequestError
			return errors.As(err, &re) && re.Status == 429 && re.Retryable && re.RetryAfter == time.Second
		}},
		{"503", sim.Options{Status503Rate: 1}, func(r []platform.Result, err error) bool {
			var re *platform.RequestError
			return errors.As(err, &re) && re.Status == 503 && re.Retryable
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Users, tc.opts.UnknownShare, tc.opts.DevicesMax = 10, -1, 1
			s, c := start(t, tc.opts)
			envs := envelopes(t, c, id, s.UserNumber(2), "01D")
			res, err := c.Send(ctx, envs)
			if !tc.want(res, err) {
				t.Fatalf("got %+v, %v", res, err)
			}
		})
	}
}

func TestAuthAndDown(t *testing.T) {
	s, _ := start(t, sim.Options{Users: 10})
	bad, _ := platform.NewClient(platform.ClientOptions{BaseURL: s.URL(), Secret: "wrong"})
	defer bad.Close()
	var re *platform.RequestError
	if _, err := bad.QueryKeys(context.Background(), []string{s.UserNumber(1)}); !errors.As(err, &re) || re.Status != 401 || re.Retryable {
		t.Fatalf("wrong secret: %v", err)
	}
	good, _ := platform.NewClient(platform.ClientOptions{BaseURL: s.URL(), Secret: "sekret"})
	defer good.Close()
	s.SetDown(true)
	if _, err := good.QueryKeys(context.Background(), []string{s.UserNumber(1)}); !errors.As(err, &re) || re.Status != 503 {
		t.Fatalf("down: %v", err)
	}
	s.SetDown(false)
	if _, err := good.QueryKeys(context.Background(), []string{s.UserNumber(1)}); err != nil {
		t.Fatalf("back up: %v", err)
	}
}

func TestOptionValidation(t *testing.T) {
	for _, o := range []sim.Options{{Prefix: "12a"}, {DevicesMin: 3, DevicesMax: 2}, {DevicesMax: 200}, {Prefix: "1555", Users: 100_000_000}} {
		if _, err := sim.New(o); err == nil {
			t.Errorf("accepted %+v", o)
		}
	}
	if _, _, err := sim.ParseDevices("3-1"); err == nil {
		t.Error("ParseDevices accepted 3-1")
	}
	if lo, hi, err := sim.ParseDevices("1-3"); err != nil || lo != 1 || hi != 3 {
		t.Error("ParseDevices 1-3")
	}
}

// TestMalformedMessagesBodyIs400: a body that is not the contract's JSON gets
// a 400 with a message, and nothing is counted as delivered.
func TestMalformedMessagesBodyIs400(t *testing.T) {
	s, _ := start(t, sim.Options{})
	for _, body := range []string{`garbage`, `{"envelopes":[`, `{"envelopes":{"id":1}}`, `{"envelopes":[{"device_id":"x"}]}`} {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		req.SetRequestURI(s.URL() + "/v1/messages")
		req.Header.SetMethod("POST")
		req.Header.Set("Authorization", "Bearer sekret")
		req.SetBodyString(body)
		if err := fasthttp.Do(req, resp); err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode() != 400 || !bytes.Contains(resp.Body(), []byte("envelopes")) {
			t.Fatalf("%q: %d %s", body, resp.StatusCode(), resp.Body())
		}
		fasthttp.ReleaseRequest(req)
		fasthttp.ReleaseResponse(resp)
	}
	if st := s.Stats(); st.Decrypted != 0 || st.Envelopes != 0 {
		t.Fatalf("stats after garbage: %+v", st)
	}
}

// TestPlaintextMismatchIsCounted: a ciphertext that decrypts to something other
// than the contract's plaintext for its envelope (another id, not JSON) is
// counted as a mismatch, not as a clean delivery.
func TestPlaintextMismatchIsCounted(t *testing.T) {
	s, c := start(t, sim.Options{Users: 100, UnknownShare: -1, DevicesMin: 1, DevicesMax: 1})
	id, _ := signal.NewIdentity("15550001111")
	user := s.UserNumber(3)
	k, err := c.QueryKeys(context.Background(), []string{user})
	if err != nil || len(k.Users) != 1 {
		t.Fatalf("keys: %v", err)
	}
	d := k.Users[0].Devices[0]
	b, _ := signal.DecodeBundle(user, d)
	built, _ := signal.BuildSession(id, b, nil, false)
	other, _ := json.Marshal(platform.Plaintext{ID: "01OTHER", From: id.Phone, Type: "text", Text: &platform.TextBody{Body: "hi"}})
	cts, _ := signal.EncryptBatch(built.Record, [][]byte{other, []byte("not json")})
	for i, ct := range cts {
		env := platform.Envelope{ID: "01MSG" + string(rune('A'+i)), From: id.Phone, To: user, DeviceID: d.DeviceID, Type: ct.Type,
			Ciphertext: base64.StdEncoding.EncodeToString(ct.Body)}
		if _, err := c.Send(context.Background(), []platform.Envelope{env}); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.Mismatches != 2 {
		t.Fatalf("mismatches %d, want 2 (%+v)", st.Mismatches, st)
	}
}
