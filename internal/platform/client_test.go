package platform

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// serve answers /v1/messages on loopback: 503 for a request holding an
// envelope with id "fail", every envelope accepted otherwise; hold blocks
// every answer until it is closed.
func serve(t *testing.T, hold chan struct{}) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if hold != nil {
			<-hold
		}
		var req MessagesRequest
		if err := json.Unmarshal(ctx.PostBody(), &req); err != nil {
			ctx.SetStatusCode(400)
			return
		}
		var out MessagesResponse
		for _, e := range req.Envelopes {
			if e.ID == "fail" {
				ctx.SetStatusCode(503)
				return
			}
			out.Results = append(out.Results, Result{ID: e.ID, DeviceID: e.DeviceID, Status: StatusAccepted})
		}
		b, _ := json.Marshal(out)
		ctx.SetContentType("application/json")
		ctx.SetBody(b)
	}}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown() })
	return "http://" + ln.Addr().String()
}

// SendEach tells which envelopes a failed request held: with two envelopes
// per request, the pair with "fail" in it gets the request's error, the
// others their results. Send reports the first error.
func TestSendEachReportsEachEnvelopesRequest(t *testing.T) {
	c, err := NewClient(ClientOptions{BaseURL: serve(t, nil), Secret: "s", MaxBatch: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	envs := []Envelope{{ID: "a", DeviceID: 1}, {ID: "b", DeviceID: 1}, {ID: "fail", DeviceID: 1}, {ID: "c", DeviceID: 1}, {ID: "d", DeviceID: 1}}
	res, errs := c.SendEach(context.Background(), envs)
	if len(res) != len(envs) || len(errs) != len(envs) {
		t.Fatalf("%d results, %d errors for %d envelopes", len(res), len(errs), len(envs))
	}
	for i, e := range envs {
		var re *RequestError
		failed := i == 2 || i == 3 // the second request
		switch {
		case failed && (!errors.As(errs[i], &re) || re.Status != 503 || !re.Retryable):
			t.Fatalf("%s: error %v, want the request's 503", e.ID, errs[i])
		case !failed && (errs[i] != nil || res[i].Status != StatusAccepted || res[i].ID != e.ID):
			t.Fatalf("%s: %+v %v, want accepted", e.ID, res[i], errs[i])
		}
	}
	if _, err := c.Send(context.Background(), envs); err == nil {
		t.Fatal("Send hid a failed request")
	}
	if res, err := c.Send(context.Background(), envs[:2]); err != nil || res[1].Status != StatusAccepted {
		t.Fatalf("Send: %+v %v", res, err)
	}
}

// A caller whose context ends stops waiting: every envelope gets the
// context's error. A closed client refuses at once.
func TestSendEachStopsWithItsContext(t *testing.T) {
	hold := make(chan struct{})
	c, err := NewClient(ClientOptions{BaseURL: serve(t, hold), Secret: "s", Linger: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	res, errs := c.SendEach(ctx, []Envelope{{ID: "a", DeviceID: 1}, {ID: "b", DeviceID: 2}})
	if res != nil || len(errs) != 2 || !errors.Is(errs[0], context.DeadlineExceeded) || !errors.Is(errs[1], context.DeadlineExceeded) {
		t.Fatalf("%v %v", res, errs)
	}
	close(hold)
	c.Close()
	if _, errs := c.SendEach(context.Background(), []Envelope{{ID: "a"}}); !errors.Is(errs[0], ErrClientClosed) {
		t.Fatalf("closed client: %v", errs)
	}
}
