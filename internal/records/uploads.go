package records

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	json "github.com/goccy/go-json"

	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/seal"
)

// The records an upload leaves behind: the campaign record, and for
// requests with an Idempotency-Key the remembered answer and the progress of
// an upload that broke off. Answers and progress list phone numbers (contacts,
// rejected inputs), so they are sealed and deleted when the messages they
// answer for expire, never later than IdemTTL (invariant 11).
//
//	e C <campaign id>                     → campaign record (sealed JSON; clear JSON before s12)
//	e L <phone number id> 0 <^created ms(8)> <campaign id> → the list of a number's campaigns, newest first
//	t K <business> 0 <key>                → campaign answer: sent ms(8) || body (sealed)
//	t K <business> 0 0x01 msg 0 <key>     → single-send answer: sent ms(8) || SHA-256 of the request || body (sealed)
//	t P <business> 0 <key>                → upload progress (sealed, the API's JSON)
//	t X <until(8), unix s> <record key>   → when each answer or progress record goes

// IdemTTL is how long an Idempotency-Key is remembered at most.
const IdemTTL = 24 * time.Hour

// Campaign is the stored campaign record (e C <id>).
type Campaign struct {
	ID            string `json:"id"`
	BusinessID    string `json:"business_id"`
	PhoneNumberID string `json:"phone_number_id"`
	Name          string `json:"name"`
	Accepted      int    `json:"accepted"`
	Rejected      int    `json:"rejected"`
	CreatedMS     int64  `json:"created_ms"`
	UploadedMS    int64  `json:"uploaded_ms,omitempty"`
	// ExpiresMS is when the campaign's last message expires (upload + TTL):
	// the record and its counters are deleted StatusGrace after it.
	ExpiresMS int64 `json:"expires_ms,omitempty"`
	// SendAtMS: nothing is sent before (0: at once).
	SendAtMS int64 `json:"send_at_ms,omitempty"`
	// Quiet hours in the recipients' local time, "HH:MM" (empty: none).
	QuietStart string `json:"quiet_start,omitempty"`
	QuietEnd   string `json:"quiet_end,omitempty"`
	// TTLSeconds is each message's time to live.
	TTLSeconds int64 `json:"ttl_seconds,omitempty"`
}

// Uploads reads and writes the records uploads and single sends leave.
type Uploads struct {
	db     *kv.DB
	sealer *seal.Sealer
	now    func() time.Time
	// replicate, in cluster mode, stores a campaign record cluster-wide
	// before this node commits it.
	replicate func(id string, sealed []byte) error

	// shared, in cluster mode, holds idempotent answers and upload
	// progress for every node (a retry may reach another node).
	shared  SharedRecords
	pmu     sync.Mutex
	pending map[*pebble.Batch][]sharedPut // written once the batch is durable (Committed)
}

// SharedRecords is a cluster-wide store of sealed records (a KV bucket
// whose entries live at least IdemTTL).
type SharedRecords interface {
	Get(key string) ([]byte, bool, error)
	Put(key string, v []byte) error
}

type sharedPut struct {
	key string
	v   []byte
}

// SetShared makes idempotent answers and upload progress cluster-wide:
// written there too (once durable here), and looked up there when this
// node has none.
func (u *Uploads) SetShared(s SharedRecords) {
	u.pmu.Lock()
	u.shared, u.pending = s, map[*pebble.Batch][]sharedPut{}
	u.pmu.Unlock()
}

// sharedKey names a record in the shared store: kind, then a digest of the
// business and the client's key (any characters, up to 200).
func sharedKey(kind, biz, key string) string {
	h := sha256.Sum256([]byte(biz + "\x00" + key))
	return kind + "." + hex.EncodeToString(h[:])
}

// sharedValue: forget-at (unix ms) | the sealed record.
func sharedValue(sealed []byte, forgetAt time.Time) []byte {
	return append(binary.BigEndian.AppendUint64(nil, uint64(forgetAt.UnixMilli())), sealed...)
}

// getShared returns a shared record's sealed value if it is there and not
// past its time; an error when the cluster cannot say (the request must not
// be taken as new then: it may have been accepted elsewhere).
func (u *Uploads) getShared(kind, biz, key string) ([]byte, bool, error) {
	u.pmu.Lock()
	sh := u.shared
	u.pmu.Unlock()
	if sh == nil {
		return nil, false, nil
	}
	v, ok, err := sh.Get(sharedKey(kind, biz, key))
	if err != nil {
		return nil, false, fmt.Errorf("records: idempotency records of the cluster unreachable: %w", err)
	}
	if !ok || len(v) < 8 || u.now().UnixMilli() >= int64(binary.BigEndian.Uint64(v)) {
		return nil, false, nil
	}
	return v[8:], true, nil
}

// later records a shared write to make once b is durable.
func (u *Uploads) later(b *pebble.Batch, kind, biz, key string, sealed []byte, forgetAt time.Time) {
	u.pmu.Lock()
	defer u.pmu.Unlock()
	if u.shared != nil {
		u.pending[b] = append(u.pending[b], sharedPut{sharedKey(kind, biz, key), sharedValue(sealed, forgetAt)})
	}
}

// Committed writes b's shared records, now that b (its messages accepted)
// is durable; Discard forgets them (b was not).
func (u *Uploads) Committed(b *pebble.Batch) error {
	u.pmu.Lock()
	puts, sh := u.pending[b], u.shared
	delete(u.pending, b)
	u.pmu.Unlock()
	for _, p := range puts {
		if err := sh.Put(p.key, p.v); err != nil {
			return fmt.Errorf("records: idempotency record not stored in the cluster: %w", err)
		}
	}
	return nil
}

// Intend stores an idempotent request's intent in the cluster's shared
// records now, before the messages it names are published: kind "p", an
// upload's progress with the seed of its message ids; kind "i", a single
// send's message id. A node killed between JetStream's acknowledgement and
// Committed leaves it for the retry (on any node), which publishes the same
// ids again. A single node has no such window and stores nothing.
func (u *Uploads) Intend(kind, biz, key string, v []byte, forgetAt time.Time) error {
	u.pmu.Lock()
	sh := u.shared
	u.pmu.Unlock()
	if sh == nil {
		return nil
	}
	if err := sh.Put(sharedKey(kind, biz, key), sharedValue(u.sealer.Seal(nil, v), forgetAt)); err != nil {
		return fmt.Errorf("records: idempotency intent not stored in the cluster: %w", err)
	}
	return nil
}

// SendIntent returns the intent a single send with this key left (Intend
// "i"), if the cluster has one; an error when the cluster cannot say.
func (u *Uploads) SendIntent(biz, key string) ([]byte, bool, error) {
	raw, ok, err := u.getShared("i", biz, key)
	if err != nil || !ok {
		return nil, false, err
	}
	v, err := u.sealer.Open(raw)
	if err != nil {
		return nil, false, fmt.Errorf("records: send intent record does not open: %w", err)
	}
	return v, true, nil
}

// Discard drops b's shared records (b was not committed).
func (u *Uploads) Discard(b *pebble.Batch) {
	u.pmu.Lock()
	delete(u.pending, b)
	u.pmu.Unlock()
}

// SetReplicator makes every campaign record go through f first (cluster
// mode); the other nodes store it with ApplyCampaign.
func (u *Uploads) SetReplicator(f func(id string, sealed []byte) error) { u.replicate = f }

// ApplyCampaign stores a campaign record another node replicated (sealed).
func (u *Uploads) ApplyCampaign(sealed []byte) error {
	var c Campaign
	if err := u.decodeCampaign(sealed, &c); err != nil {
		return fmt.Errorf("records: replicated campaign unreadable: %w", err)
	}
	b := u.db.NewBatch()
	b.Set(campaignKey(c.ID), sealed, nil)
	b.Set(listKey(c.PhoneNumberID, c.CreatedMS, c.ID), nil, nil)
	return u.db.Commit(b, false)
}

// NewUploads returns the upload records of db; now is the clock.
func NewUploads(db *kv.DB, sealer *seal.Sealer, now func() time.Time) *Uploads {
	return &Uploads{db: db, sealer: sealer, now: now}
}

func campaignKey(id string) []byte { return append([]byte("eC"), id...) }

// listKey files a campaign under its phone number, newest first.
func listKey(pn string, createdMS int64, id string) []byte {
	k := append([]byte("eL"+pn), 0)
	k = binary.BigEndian.AppendUint64(k, ^uint64(createdMS))
	return append(k, id...)
}

func idemKey(biz, key string) []byte { return append([]byte("tK"+biz+"\x00"), key...) }

// sentIdemKey is where a single send's answer lives (beside the campaigns'
// keys, in a namespace of its own).
func sentIdemKey(biz, key string) []byte { return idemKey(biz, "\x01msg\x00"+key) }

func progressKey(biz, key string) []byte { return append([]byte("tP"+biz+"\x00"), key...) }

const forgetPrefix = "tX"

func forgetKey(until time.Time, key []byte) []byte {
	k := binary.BigEndian.AppendUint64([]byte(forgetPrefix), uint64(until.Unix()))
	return append(k, key...)
}

// IdemExpiry is when an idempotent answer or upload progress made at created
// for messages living ttl is forgotten: the earlier of the two.
func IdemExpiry(created time.Time, ttl time.Duration) time.Time {
	if ttl <= 0 || ttl > IdemTTL {
		ttl = IdemTTL
	}
	return created.Add(ttl)
}

// SaveCampaign writes c (sealed: the name is the business's words) and its
// place in its phone number's list, fsync'd.
func (u *Uploads) SaveCampaign(c *Campaign) error {
	v, _ := json.Marshal(c)
	sealed := u.sealer.Seal(nil, v)
	if u.replicate != nil {
		if err := u.replicate(c.ID, sealed); err != nil {
			return err
		}
	}
	b := u.db.NewBatch()
	b.Set(campaignKey(c.ID), sealed, nil)
	b.Set(listKey(c.PhoneNumberID, c.CreatedMS, c.ID), nil, nil)
	return u.db.Commit(b, true)
}

// ListCampaigns returns up to limit campaigns of phone number pn, newest
// first, starting after the campaign named by after (a cursor ListCampaigns
// returned; "" for the first page). next is the cursor of the page's last
// campaign when more may follow.
func (u *Uploads) ListCampaigns(pn, after string, limit int) (out []*Campaign, next string, err error) {
	pre := append([]byte("eL"+pn), 0)
	lo := pre
	if after != "" {
		c, err := u.Campaign(after)
		if err != nil || c.PhoneNumberID != pn {
			return nil, "", ErrNotFound
		}
		lo = append(listKey(pn, c.CreatedMS, c.ID), 0)
	}
	it, err := u.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: kv.PrefixEnd(pre)})
	if err != nil {
		return nil, "", err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) < len(pre)+8 {
			continue
		}
		if len(out) == limit {
			return out, out[len(out)-1].ID, nil
		}
		c, err := u.Campaign(string(k[len(pre)+8:]))
		if err != nil {
			continue // swept meanwhile
		}
		out = append(out, c)
	}
	return out, "", it.Error()
}

// Campaign reads campaign id; ErrNotFound when there is none (or it does
// not open).
func (u *Uploads) Campaign(id string) (*Campaign, error) {
	v, ok, err := u.db.GetCopy(campaignKey(id))
	if err != nil {
		return nil, err
	}
	var c Campaign
	if !ok || u.decodeCampaign(v, &c) != nil {
		return nil, ErrNotFound
	}
	return &c, nil
}

// decodeCampaign reads a campaign record: sealed JSON, or the clear JSON
// written before session 12.
func (u *Uploads) decodeCampaign(v []byte, c *Campaign) error {
	if len(v) == 0 || v[0] != '{' {
		var err error
		if v, err = u.sealer.Open(v); err != nil {
			return err
		}
	}
	return json.Unmarshal(v, c)
}

// Answer returns the remembered answer to business biz's upload with
// Idempotency-Key key, if it is younger than IdemTTL.
func (u *Uploads) Answer(biz, key string) ([]byte, bool, error) {
	raw, ok, err := u.db.GetCopy(idemKey(biz, key))
	if err == nil && !ok {
		raw, ok, err = u.getShared("a", biz, key)
	}
	if err != nil || !ok {
		return nil, false, err
	}
	v, err := u.sealer.Open(raw)
	if err != nil || len(v) < 8 {
		return nil, false, nil
	}
	if u.now().Sub(time.UnixMilli(int64(binary.BigEndian.Uint64(v)))) > IdemTTL {
		return nil, false, nil
	}
	return v[8:], true, nil
}

// RememberAnswer stores an upload's final answer (sealed), to be deleted at
// forgetAt, and drops its progress record, in one fsync'd batch.
func (u *Uploads) RememberAnswer(biz, key string, body []byte, forgetAt time.Time) error {
	v := binary.BigEndian.AppendUint64(nil, uint64(u.now().UnixMilli()))
	b := u.db.NewBatch()
	k := idemKey(biz, key)
	sealed := u.sealer.Seal(nil, append(v, body...))
	b.Set(k, sealed, nil)
	b.Set(forgetKey(forgetAt, k), nil, nil)
	b.Delete(progressKey(biz, key), nil)
	if err := u.db.Commit(b, true); err != nil {
		return err
	}
	u.later(b, "a", biz, key, sealed, forgetAt)
	return u.Committed(b)
}

// SentAnswer returns the remembered answer to a single send with this key
// (within IdemTTL), and whether the request (its SHA-256) was the same.
func (u *Uploads) SentAnswer(biz, key string, reqHash [32]byte) (answer []byte, found, same bool, err error) {
	raw, ok, err := u.db.GetCopy(sentIdemKey(biz, key))
	if err == nil && !ok {
		raw, ok, err = u.getShared("s", biz, key)
	}
	if err != nil || !ok {
		return nil, false, false, err
	}
	v, err := u.sealer.Open(raw) // the answer holds the recipient's number
	if err != nil || len(v) < 8+32 {
		return nil, false, false, nil
	}
	if u.now().Sub(time.UnixMilli(int64(binary.BigEndian.Uint64(v)))) > IdemTTL {
		return nil, false, false, nil
	}
	return v[40:], true, [32]byte(v[8:40]) == reqHash, nil
}

// RememberSent adds a single send's answer to b, the batch that enqueues its
// message: a retry after a timeout finds it exactly when the message was
// accepted. It is deleted at forgetAt.
func (u *Uploads) RememberSent(b *pebble.Batch, biz, key string, reqHash [32]byte, answer []byte, now, forgetAt time.Time) {
	v := binary.BigEndian.AppendUint64(make([]byte, 0, 40+len(answer)), uint64(now.UnixMilli()))
	v = append(append(v, reqHash[:]...), answer...)
	k := sentIdemKey(biz, key)
	sealed := u.sealer.Seal(nil, v)
	b.Set(k, sealed, nil)
	b.Set(forgetKey(forgetAt, k), nil, nil)
	u.later(b, "s", biz, key, sealed, forgetAt)
}

// Progress returns the progress record (the caller's JSON) of business biz's
// upload with key that broke off, or nil.
func (u *Uploads) Progress(biz, key string) ([]byte, error) {
	raw, ok, err := u.db.GetCopy(progressKey(biz, key))
	if err == nil && !ok {
		raw, ok, err = u.getShared("p", biz, key)
	}
	if err != nil || !ok {
		return nil, err
	}
	v, err := u.sealer.Open(raw)
	if err != nil {
		return nil, fmt.Errorf("records: upload progress record does not open: %w", err)
	}
	return v, nil
}

// PutProgress adds the progress record v of business biz's upload with key
// to b (the batch that enqueues the lines it counts), to be deleted at
// forgetAt: it lists rejected numbers.
func (u *Uploads) PutProgress(b *pebble.Batch, biz, key string, v []byte, forgetAt time.Time) {
	k := progressKey(biz, key)
	sealed := u.sealer.Seal(nil, v)
	b.Set(k, sealed, nil)
	b.Set(forgetKey(forgetAt, k), nil, nil)
	u.later(b, "p", biz, key, sealed, forgetAt)
}

// Sweep deletes, at now, the answers and progress records whose time has
// come, and the campaign records (with their counters) whose last message
// expired more than StatusGrace ago: at most limit of each per call. It
// returns how many records it deleted. The node runs it periodically.
func (u *Uploads) Sweep(now time.Time, limit int) (int, error) {
	hi := binary.BigEndian.AppendUint64([]byte(forgetPrefix), uint64(now.Unix())+1)
	n, err := u.db.SweepIndex(forgetPrefix, hi, limit, func(b *pebble.Batch, key string) { b.Delete([]byte(key), nil) }, false)
	if err != nil {
		return n, err
	}
	// Campaign records: one per upload, few; read whole.
	it, err := u.db.NewIter(&pebble.IterOptions{LowerBound: []byte("eC"), UpperBound: []byte("eD")})
	if err != nil {
		return n, err
	}
	b := u.db.NewBatch()
	cut := now.Add(-StatusGrace).UnixMilli()
	m := 0
	for it.First(); it.Valid() && m < limit; it.Next() {
		var c Campaign
		if u.decodeCampaign(it.Value(), &c) != nil || c.ExpiresMS == 0 || c.ExpiresMS > cut {
			continue
		}
		b.Delete(append([]byte(nil), it.Key()...), nil)
		b.Delete(listKey(c.PhoneNumberID, c.CreatedMS, c.ID), nil)
		DeleteCounters(b, c.ID)
		m++
	}
	if err := it.Close(); err != nil {
		b.Close()
		return n, err
	}
	if m == 0 {
		b.Close()
		return n, nil
	}
	return n + m, u.db.Commit(b, false)
}
