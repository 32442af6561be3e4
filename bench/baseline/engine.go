package baseline

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.mau.fi/libsignal/state/record"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/seal"
	"github.com/heraldhq/herald/internal/signal"
)

// Message is one message to deliver.
type Message struct {
	ID, To, Body string
}

// NaiveEngine delivers each message on its own goroutine: fsync the message,
// query keys for its recipient alone, load each device's session from Pebble,
// encrypt, store the session (fsync), POST one envelope with net/http, delete
// the message (fsync). Retries sleep and try again.
type NaiveEngine struct {
	DB          *pebble.DB
	Sealer      *seal.Sealer
	PlatformURL string
	Secret      string
	ID          *signal.Identity
	HC          *http.Client
}

func (n *NaiveEngine) post(path string, in, out any) error {
	body, _ := json.Marshal(in)
	req, _ := http.NewRequest("POST", n.PlatformURL+path, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+n.Secret)
	req.Header.Set("Content-Type", "application/json")
	resp, err := n.HC.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Deliver sends msgs and returns when every one was accepted (or failed permanently).
func (n *NaiveEngine) Deliver(ctx context.Context, msgs []Message) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(msgs))
	for _, m := range msgs {
		wg.Add(1)
		go func(m Message) {
			defer wg.Done()
			if err := n.one(ctx, m); err != nil {
				errs <- err
			}
		}(m)
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func (n *NaiveEngine) sessionKey(user string, dev uint32) []byte {
	return []byte(fmt.Sprintf("s/%s/%s/%d", n.ID.Phone, user, dev))
}

func (n *NaiveEngine) one(ctx context.Context, m Message) error {
	mk := []byte("m/" + m.ID)
	if err := n.DB.Set(mk, n.Sealer.Seal(nil, []byte(m.To+"|"+m.Body)), pebble.Sync); err != nil {
		return err
	}
	devs, err := n.devices(m.To)
	if err != nil || len(devs) == 0 {
		return err // unknown user: dropped
	}
	pt, _ := json.Marshal(platform.Plaintext{ID: m.ID, From: n.ID.Phone, TS: clock.Wall().Unix(), Type: "text", Text: &platform.TextBody{Body: m.Body}})
	for _, d := range devs {
		for attempt := 0; ; attempt++ {
			rec, err := n.load(m.To, d.DeviceID, d)
			if err != nil {
				return err
			}
			cts, err := signal.EncryptBatch(rec, [][]byte{pt})
			if err != nil {
				return err
			}
			if err := n.DB.Set(n.sessionKey(m.To, d.DeviceID), n.Sealer.Seal(nil, rec.Serialize()), pebble.Sync); err != nil {
				return err
			}
			var res platform.MessagesResponse
			err = n.post("/v1/messages", platform.MessagesRequest{Envelopes: []platform.Envelope{{ID: m.ID, From: n.ID.Phone, To: m.To,
				DeviceID: d.DeviceID, Type: cts[0].Type, Ciphertext: base64.StdEncoding.EncodeToString(cts[0].Body)}}}, &res)
			if err == nil && len(res.Results) == 1 && res.Results[0].Status == platform.StatusAccepted {
				break
			}
			if attempt > 20 {
				return fmt.Errorf("naive: gave up on %s", m.ID)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return n.DB.Delete(mk, pebble.Sync)
}

// devices returns bundles only when some session is missing; otherwise the
// device ids from stored sessions (warm path: no key query).
func (n *NaiveEngine) devices(user string) ([]platform.DeviceBundle, error) {
	if v, closer, err := n.DB.Get([]byte("d/" + user)); err == nil {
		var ids []uint32
		json.Unmarshal(v, &ids)
		closer.Close()
		out := make([]platform.DeviceBundle, len(ids))
		for i, id := range ids {
			out[i] = platform.DeviceBundle{DeviceID: id}
		}
		return out, nil
	}
	var k platform.KeysResponse
	if err := n.post("/v1/keys/query", platform.KeysQuery{Users: []string{user}}, &k); err != nil {
		return nil, err
	}
	if len(k.Users) == 0 {
		return nil, nil
	}
	var ids []uint32
	for _, d := range k.Users[0].Devices {
		ids = append(ids, d.DeviceID)
	}
	v, _ := json.Marshal(ids)
	n.DB.Set([]byte("d/"+user), v, pebble.Sync)
	return k.Users[0].Devices, nil
}

// load reads and unseals a session, or builds one from the bundle.
func (n *NaiveEngine) load(user string, dev uint32, bundle platform.DeviceBundle) (*record.Session, error) {
	v, closer, err := n.DB.Get(n.sessionKey(user, dev))
	if err == nil {
		defer closer.Close()
		raw, err := n.Sealer.Open(v)
		if err != nil {
			return nil, err
		}
		return record.NewSessionFromBytes(raw, signal.Serializer.Session, signal.Serializer.State)
	}
	b, err := signal.DecodeBundle(user, bundle)
	if err != nil {
		return nil, err
	}
	built, err := signal.BuildSession(n.ID, b, nil, false)
	if err != nil {
		return nil, err
	}
	return built.Record, nil
}
