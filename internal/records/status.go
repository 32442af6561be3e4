package records

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	json "github.com/goccy/go-json" // Herald's own records: same bytes as encoding/json, faster
	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/metrics"
)

// MessageStatus is the stored status of one message: no phone number, no body.
type MessageStatus struct {
	BusinessID    string          `json:"b"`
	PhoneNumberID string          `json:"p"`
	CampaignID    string          `json:"c,omitempty"`
	Status        string          `json:"s"`
	Code          int             `json:"code,omitempty"`
	History       []StatusHistory `json:"h"`
	// Expires is the message's expiry (unix seconds; 0 in records written
	// before session 12).
	Expires int64 `json:"x,omitempty"`
}

// StatusHistory is one step of a message's status history.
type StatusHistory struct {
	TS     int64  `json:"ts"`
	Status string `json:"status"`
	Code   int    `json:"code,omitempty"`
}

const maxHistory = 10

var rankNames = []string{heraldtype.StatusQueued, heraldtype.StatusSent, heraldtype.StatusDelivered, heraldtype.StatusRead}

// Counters are a campaign's incrementally maintained counts.
type Counters struct {
	Sent      int64            `json:"sent"`
	Delivered int64            `json:"delivered"`
	Read      int64            `json:"read"`
	Failed    int64            `json:"failed"`
	Canceled  int64            `json:"canceled,omitempty"`
	Failures  map[string]int64 `json:"failures,omitempty"`
	FirstSent int64            `json:"first_sent_ms,omitempty"`
	LastDone  int64            `json:"last_done_ms,omitempty"`
}

// statusKey: e M <id>; countersKey: e c <campaign>; statusExpiryKey: e X
// <until(8), unix seconds> <id>, the index the retention sweep deletes status
// records by.
func statusKey(id string) []byte { return append([]byte("eM"), id...) }

// DeleteCounters deletes a campaign's counters in b (the campaign's records
// reached their retention).
func DeleteCounters(b *pebble.Batch, campaignID string) { b.Delete(countersKey(campaignID), nil) }

// StatusGrace is how long a message's status record outlives the message
// (its final status, failed/expired included, can be read and reported);
// then only the campaign counters remain (invariant 5).
const StatusGrace = time.Hour

func appendStatusExpiryKey(dst []byte, until int64, id string) []byte {
	return append(binary.BigEndian.AppendUint64(append(dst, "eX"...), uint64(until)), id...)
}
func countersKey(cid string) []byte { return append([]byte("ec"), cid...) }

// NewStatusRecord is the record the API writes, in the enqueue batch, for a
// newly accepted message. now must be the payload's TS (the engine's first
// "sent" rebuilds this record from the payload instead of reading it).
func NewStatusRecord(b *pebble.Batch, id, businessID, phoneNumberID, campaignID string, now, expires time.Time) {
	NewQueuedRecords(businessID, phoneNumberID, campaignID).Put(b, id, now, expires)
}

// QueuedRecords writes the "queued" status records of one business, number
// and campaign: the record (statusrec.go), of which only the time varies, is
// encoded once and the time spliced in (an upload writes a million).
type QueuedRecords struct {
	head, tail []byte
	key, val   []byte
}

// NewQueuedRecords prepares the records for one business, number and campaign.
func NewQueuedRecords(businessID, phoneNumberID, campaignID string) *QueuedRecords {
	// appendStatus's layout with one history entry: everything before the
	// entry's time is the head, everything after it the tail. The record
	// without history ends in its count, 0 (one byte); with one entry it is 1.
	rec := MessageStatus{BusinessID: businessID, PhoneNumberID: phoneNumberID, CampaignID: campaignID,
		Status: heraldtype.StatusQueued}
	head := appendStatus(nil, &rec)
	head = head[:len(head)-1] // Expires (0: one byte) goes after the history
	head[len(head)-1] = 1
	tail := binary.AppendVarint(appendStr(nil, heraldtype.StatusQueued), 0)
	return &QueuedRecords{head: head, tail: tail}
}

// Put adds message id's record, queued at now and expiring at expires, to b.
// Not for concurrent use (Set copies; the buffers are reused).
func (q *QueuedRecords) Put(b *pebble.Batch, id string, now, expires time.Time) {
	q.val = append(binary.AppendVarint(append(q.val[:0], q.head...), now.Unix()), q.tail...)
	q.val = binary.AppendVarint(q.val, expires.Unix())
	q.key = append(append(q.key[:0], "eM"...), id...)
	b.Set(q.key, q.val, nil)
	q.key = appendStatusExpiryKey(q.key[:0], expires.Add(StatusGrace).Unix(), id)
	b.Set(q.key, nil, nil)
}

// statusBatch is a submission; done (if set) is closed once it is committed.
type statusBatch struct {
	ups  []Update
	done chan struct{}
}

// Update is one requested transition.
type Update struct {
	ID        string
	Status    string
	Code      int
	At        time.Time
	Recipient string // the recipient's number, for the reports only (never stored)
	// Fresh: Queued is the record the message was enqueued with, as the
	// engine knows it, and the writer takes it instead of reading the stored
	// one (see overtaken). A value, not a pointer: one per message sent.
	Fresh  bool
	Queued Queued
}

// Queued is a message's "queued" record as the API wrote it in the enqueue
// batch: its business, number and campaign, and the time, which is the
// payload's TS (both are the accept time in seconds).
type Queued struct {
	BusinessID, PhoneNumberID, CampaignID string
	TS, Expires                           int64
}

func (q Queued) record() *MessageStatus {
	return &MessageStatus{BusinessID: q.BusinessID, PhoneNumberID: q.PhoneNumberID, CampaignID: q.CampaignID,
		Status: heraldtype.StatusQueued, History: []StatusHistory{{TS: q.TS, Status: heraldtype.StatusQueued}}, Expires: q.Expires}
}

// The engine's "sent" for a message on its first lease (enqueued by this
// process, never handed out before) and not a retransmission comes with the
// message's queued record, which nothing but this writer can have changed
// since: the writer uses it instead of a point read (~4 % of the warm
// engine's CPU). The one thing that can have changed it is an event (a
// delivered receipt can overtake the engine's own "sent"): an id whose
// queued record an event moved is remembered (overtaken) until its "sent"
// comes, and that "sent" reads the stored record as any other update does.
// An id the engine never sends a fresh "sent" for (it retried the message
// instead) is forgotten after overtakenFor, and at most overtakenMax ids are
// kept (the oldest go first): the "sent" follows its transmission within one
// task (platform requests time out after 10 s), so only a flood of receipts
// faster than the writer could push a live id out.
const (
	overtakenFor = 10 * time.Minute
	overtakenMax = 100_000
)

type overtaken struct {
	at   map[string]time.Time
	fifo []overtakenEntry
}

type overtakenEntry struct {
	id string
	at time.Time
}

func (o *overtaken) add(id string, now time.Time) {
	if o.at == nil {
		o.at = map[string]time.Time{}
	}
	o.at[id] = now
	o.fifo = append(o.fifo, overtakenEntry{id, now})
	if len(o.fifo) > overtakenMax {
		// A tenth at a time: dropping one entry per add copied the whole
		// fifo each time (quadratic in a flood).
		o.drop(len(o.fifo) - overtakenMax*9/10)
	}
}

// drop forgets the n oldest entries of the fifo (an id re-added since keeps
// its newer entry).
func (o *overtaken) drop(n int) {
	for _, e := range o.fifo[:n] {
		if at, ok := o.at[e.id]; ok && at.Equal(e.at) {
			delete(o.at, e.id)
		}
	}
	o.fifo = append(o.fifo[:0], o.fifo[n:]...)
}

// take reports whether id is remembered, forgetting it.
func (o *overtaken) take(id string) bool {
	if _, ok := o.at[id]; !ok {
		return false
	}
	delete(o.at, id)
	return true
}

// expire forgets ids remembered before now − overtakenFor.
func (o *overtaken) expire(now time.Time) {
	i := 0
	for i < len(o.fifo) && now.Sub(o.fifo[i].at) > overtakenFor {
		i++
	}
	if i > 0 {
		o.drop(i)
	}
}

// Statuses is the single writer of message statuses and campaign counters: all
// transitions funnel through one goroutine, so read-modify-write needs no
// locks and a status can only move forward (queued → sent → delivered → read;
// failed is terminal and only reachable before delivery).
type Statuses struct {
	db       *kv.DB
	log      *slog.Logger
	m        *metrics.Metrics
	onChange func([]heraldtype.StatusChange)
	hook     func(*pebble.Batch, []heraldtype.StatusChange)

	in       chan statusBatch
	flushReq chan chan struct{}
	done     chan struct{}
	counters *lru.Cache[string, *Counters]
	batches  *kv.BatchPool // apply's batches, reset and kept between rounds
	over     overtaken     // the loop's own
	now      func() time.Time
	closeMu  sync.Mutex
	closed   bool
}

// Options configure a Statuses writer.
type Options struct {
	DB      *kv.DB           // required
	Metrics *metrics.Metrics // required
	Logger  *slog.Logger     // default slog.Default()
	Now     func() time.Time // default time.Now
	// OnChange receives status transitions after they are committed.
	OnChange func([]heraldtype.StatusChange)
	// Hook adds the caller's writes (webhook outbox) to the batch that
	// commits status transitions, so they are durable together.
	Hook func(b *pebble.Batch, changes []heraldtype.StatusChange)
}

// New starts the status writer; Close stops it.
func New(o Options) *Statuses {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = clock.Wall
	}
	c, _ := lru.New[string, *Counters](10_000)
	s := &Statuses{db: o.DB, log: o.Logger, m: o.Metrics, onChange: o.OnChange, hook: o.Hook, in: make(chan statusBatch, 1024),
		batches:  kv.NewBatchPool(o.DB, 4<<20), // a round holds up to 8,192 updates (~1 MB)
		flushReq: make(chan chan struct{}), done: make(chan struct{}), counters: c, now: o.Now}
	go s.loop()
	return s
}

// Submit queues ups for the writer and returns at once.
func (s *Statuses) Submit(ups []Update) {
	if len(ups) == 0 {
		return
	}
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return
	}
	s.in <- statusBatch{ups: ups}
}

// SubmitWait returns once ups are committed (WAL order: before anything the
// caller commits afterwards, so a crash can never keep the later write and
// lose the status).
func (s *Statuses) SubmitWait(ups []Update) {
	if len(ups) == 0 {
		return
	}
	done := make(chan struct{})
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return
	}
	s.in <- statusBatch{ups: ups, done: done}
	s.closeMu.Unlock()
	<-done
}

// Flush waits until every submitted update is written.
func (s *Statuses) Flush() {
	ch := make(chan struct{})
	select {
	case s.flushReq <- ch:
		<-ch
	case <-s.done:
	}
}

// Close stops the writer once everything submitted is written. Submits after
// it are dropped.
func (s *Statuses) Close() {
	s.closeMu.Lock()
	if !s.closed {
		s.closed = true
		close(s.in)
	}
	s.closeMu.Unlock()
	<-s.done
}

func (s *Statuses) loop() {
	defer close(s.done)
	for {
		select {
		case sb, ok := <-s.in:
			if !ok {
				return
			}
			batch := sb.ups
			var waiters []chan struct{}
			if sb.done != nil {
				waiters = append(waiters, sb.done)
			}
		drain:
			for len(batch) < 8192 {
				select {
				case more, ok := <-s.in:
					if !ok {
						break drain
					}
					batch = append(batch, more.ups...)
					if more.done != nil {
						waiters = append(waiters, more.done)
					}
				default:
					break drain
				}
			}
			s.apply(batch)
			for _, w := range waiters {
				close(w)
			}
		case ch := <-s.flushReq:
			// Everything sent before the flush request is in s.in; drain it.
			for {
				select {
				case sb, ok := <-s.in:
					if !ok {
						close(ch)
						return
					}
					s.apply(sb.ups)
					if sb.done != nil {
						close(sb.done)
					}
					continue
				default:
				}
				break
			}
			close(ch)
		}
	}
}

func (s *Statuses) loadCounters(cid string) (*Counters, error) {
	if c, ok := s.counters.Get(cid); ok {
		return c, nil
	}
	c := &Counters{}
	v, ok, err := s.db.GetCopy(countersKey(cid))
	if err != nil {
		return nil, err
	}
	if ok {
		if err := json.Unmarshal(v, c); err != nil {
			return nil, err
		}
	}
	s.counters.Add(cid, c)
	return c, nil
}

// apply makes one round of transitions, in one batch: each moves its
// message's record forward (or is dropped), counts in its campaign's
// counters, and is reported to the hook (same batch) and, once committed,
// to onChange.
func (s *Statuses) apply(ups []Update) {
	recs := map[string]*MessageStatus{}
	touched := map[string]*Counters{}
	var changes []heraldtype.StatusChange
	report := s.hook != nil || s.onChange != nil // nobody listening: no list
	if report {
		changes = make([]heraldtype.StatusChange, 0, len(ups))
	}
	now := s.now()
	s.over.expire(now)
	for _, u := range ups {
		rec := s.record(u, recs)
		if rec == nil {
			continue // unknown id (e.g. an event for a message past retention)
		}
		from, to := heraldtype.Rank(rec.Status), heraldtype.Rank(u.Status)
		if !u.Fresh && from == 0 && to >= heraldtype.Rank(heraldtype.StatusDelivered) && !heraldtype.Terminal(u.Status) {
			// An event overtook the engine's "sent": if that is a fresh one
			// still to come, it must read what this writes.
			s.over.add(u.ID, now)
		}
		if !advances(rec, u, from, to) {
			continue
		}
		var c *Counters
		if rec.CampaignID != "" {
			var err error
			if c, err = s.loadCounters(rec.CampaignID); err != nil {
				s.log.Error("records: campaign counters unreadable", "err", err)
				continue
			}
			touched[rec.CampaignID] = c
		}
		s.count(c, u, from, to, queuedAt(rec))
		rec.Status, rec.Code = u.Status, u.Code
		rec.History = append(rec.History, StatusHistory{TS: u.At.Unix(), Status: u.Status, Code: u.Code})
		if len(rec.History) > maxHistory {
			rec.History = append(rec.History[:1], rec.History[len(rec.History)-maxHistory+1:]...)
		}
		if report {
			changes = appendChanges(changes, rec, u, from, to)
		}
	}
	s.write(recs, touched, changes)
}

// record returns the record u moves: one this round already holds, the
// queued record a fresh "sent" carries, or the stored one; nil when there is
// none (or it does not decode).
func (s *Statuses) record(u Update, recs map[string]*MessageStatus) *MessageStatus {
	// A fresh "sent" is the last the engine sends while the id can be
	// remembered as overtaken: forget it either way.
	overtook := u.Fresh && s.over.take(u.ID)
	if rec, ok := recs[u.ID]; ok {
		return rec
	}
	var rec *MessageStatus
	if u.Fresh && !overtook {
		rec = u.Queued.record()
	} else {
		v, found, err := s.db.GetCopy(statusKey(u.ID))
		if err != nil || !found {
			return nil
		}
		rec = &MessageStatus{}
		if decodeStatus(v, rec) != nil {
			return nil
		}
	}
	recs[u.ID] = rec
	return rec
}

// advances reports whether u moves rec (at rank from) forward to rank to: a
// status never goes back, failed is terminal, and a delivered message cannot
// fail.
func advances(rec *MessageStatus, u Update, from, to int) bool {
	if heraldtype.Terminal(rec.Status) || to <= from {
		return false
	}
	switch u.Status {
	case heraldtype.StatusCanceled:
		return from == 0 // only a message still queued is canceled
	case heraldtype.StatusFailed:
		return from < heraldtype.Rank(heraldtype.StatusDelivered)
	}
	return true
}

// queuedAt is when rec's message was accepted (unix seconds; 0 unknown).
func queuedAt(rec *MessageStatus) int64 {
	if len(rec.History) > 0 && rec.History[0].Status == heraldtype.StatusQueued {
		return rec.History[0].TS
	}
	return 0
}

// count adds u to the metrics and to its campaign's counters c (nil: none):
// every rank passed on the way, so counters stay consistent when an event
// overtakes the engine's own "sent". accepted (unix seconds, 0 unknown) times
// the first "sent" and "delivered".
func (s *Statuses) count(c *Counters, u Update, from, to int, accepted int64) {
	ms := u.At.UnixMilli()
	if u.Status == heraldtype.StatusCanceled {
		if c != nil {
			c.Canceled++
			c.LastDone = ms
		}
		s.m.Canceled.Inc()
		return
	}
	if u.Status == heraldtype.StatusFailed {
		if c != nil {
			c.Failed++
			if c.Failures == nil {
				c.Failures = map[string]int64{}
			}
			c.Failures[strconv.Itoa(u.Code)]++
			c.LastDone = ms
		}
		s.m.Failed.WithLabelValues(strconv.Itoa(u.Code)).Inc()
		return
	}
	for r := from + 1; r <= to; r++ {
		switch r {
		case 1:
			s.m.Sent.Inc()
			if accepted > 0 {
				s.m.AcceptedToSent.Observe(max(0, u.At.Sub(time.Unix(accepted, 0)).Seconds()))
			}
			if c != nil {
				c.Sent++
				if c.FirstSent == 0 {
					c.FirstSent = ms
				}
				c.LastDone = ms
			}
		case 2:
			s.m.Delivered.Inc()
			if accepted > 0 {
				s.m.AcceptedToDelivered.Observe(max(0, u.At.Sub(time.Unix(accepted, 0)).Seconds()))
			}
			if c != nil {
				c.Delivered++
			}
		case 3:
			s.m.Read.Inc()
			if c != nil {
				c.Read++
			}
		}
	}
}

// appendChanges reports every status u passed (a "delivered" that overtook
// "sent" reports both).
func appendChanges(changes []heraldtype.StatusChange, rec *MessageStatus, u Update, from, to int) []heraldtype.StatusChange {
	first := to
	if !heraldtype.Terminal(u.Status) {
		first = from + 1
	}
	for r := first; r <= to; r++ {
		st := u.Status
		if !heraldtype.Terminal(u.Status) {
			st = rankNames[r]
		}
		changes = append(changes, heraldtype.StatusChange{MessageID: u.ID, BusinessID: rec.BusinessID, PhoneNumberID: rec.PhoneNumberID,
			CampaignID: rec.CampaignID, Status: st, Code: u.Code, TS: u.At.Unix(), Recipient: u.Recipient, Expires: rec.Expires})
	}
	return changes
}

// write commits a round's records, counters and the hook's writes in one
// batch, then reports the changes.
func (s *Statuses) write(recs map[string]*MessageStatus, touched map[string]*Counters, changes []heraldtype.StatusChange) {
	b := s.batches.Get(0)
	var v []byte
	for id, rec := range recs {
		v = appendStatus(v[:0], rec) // Set copies
		b.Set(statusKey(id), v, nil)
	}
	for cid, c := range touched {
		v, _ := json.Marshal(c)
		b.Set(countersKey(cid), v, nil)
	}
	if s.hook != nil && len(changes) > 0 {
		s.hook(b, changes)
	}
	if b.Empty() {
		s.batches.PutUnused(b)
		return
	}
	// Statuses are reports: a crash may lose the last few, and the engine
	// re-derives them (a retransmission is answered "accepted" again).
	if err := s.batches.Commit(b, false); err != nil {
		s.log.Error("records: status write failed", "err", err)
		for cid := range touched {
			s.counters.Remove(cid)
		}
		return
	}
	if s.onChange != nil && len(changes) > 0 {
		s.onChange(changes)
	}
}

// ErrNotFound is returned for an unknown message or campaign.
var ErrNotFound = errors.New("records: not found")

// Message returns a message's stored status.
func (s *Statuses) Message(id string) (*MessageStatus, error) {
	v, ok, err := s.db.GetCopy(statusKey(id))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNotFound
	}
	var rec MessageStatus
	if err := decodeStatus(v, &rec); err != nil {
		return nil, err
	}
	return &rec, nil
}

// Counters returns a campaign's counters (zero when nothing moved yet).
// It reads what the status writer has committed (it may trail by a batch).
func (s *Statuses) Counters(campaignID string) (*Counters, error) {
	v, ok, err := s.db.GetCopy(countersKey(campaignID))
	if err != nil {
		return nil, err
	}
	c := &Counters{}
	if ok {
		if err := json.Unmarshal(v, c); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Sweep deletes the status records whose message expired more than
// StatusGrace before now (index e X), at most limit per call; it returns how
// many it deleted. The campaign counters stay until their campaign record
// goes (DeleteCounters).
func (s *Statuses) Sweep(now time.Time, limit int) (int, error) {
	return s.db.SweepIndex("eX", appendStatusExpiryKey(nil, now.Unix()+1, ""), limit,
		func(b *pebble.Batch, id string) { b.Delete(statusKey(id), nil) }, false)
}
