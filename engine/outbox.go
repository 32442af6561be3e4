package engine

import (
	"encoding/binary"
	"errors"

	"github.com/cockroachdb/pebble/v2"
)

// outbox is the per-message transmission state: for each device, the stored
// ciphertext (retransmissions resend it; they never re-encrypt — invariant 2),
// whether the platform accepted it, and how many session resets it took.
// Key: e O <queue seq>. No plaintext, no phone number.
type outbox struct {
	devices []deviceState
}

type deviceState struct {
	device   uint32
	accepted bool
	resets   uint8
	typ      string // "" means no ciphertext yet (never encrypted, or dropped by a reset)
	ct       []byte
}

// outboxKey is keyed by the queue entry, not the message id: a decrypt_failed
// resend shares its id with the original, which may still be queued.
func outboxKey(seq uint64) []byte { return appendOutboxKey(nil, seq) }

// appendOutboxKey appends seq's outbox key to dst (a stack buffer on hot
// paths: Pebble's batch copies the key).
func appendOutboxKey(dst []byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append(dst, "eO"...), seq)
}

func (o *outbox) get(dev uint32) *deviceState {
	for i := range o.devices {
		if o.devices[i].device == dev {
			return &o.devices[i]
		}
	}
	if o.devices == nil {
		o.devices = make([]deviceState, 0, 3) // recipients have 1–3 devices
	}
	o.devices = append(o.devices, deviceState{device: dev})
	return &o.devices[len(o.devices)-1]
}

func (o *outbox) encode() []byte { return o.appendTo(make([]byte, 0, o.size())) }

// size is len(o.encode()).
func (o *outbox) size() int {
	n := 2
	for _, d := range o.devices {
		n += 4 + len(d.typ) + uvarintLen(uint64(len(d.ct))) + len(d.ct)
	}
	return n
}

func uvarintLen(v uint64) int {
	n := 1
	for ; v >= 0x80; v >>= 7 {
		n++
	}
	return n
}

// setOutbox writes o under seq's key into b, encoded in place in the batch.
func setOutbox(b *pebble.Batch, seq uint64, o *outbox) {
	op := b.SetDeferred(10, o.size())
	copy(op.Key, "eO")
	binary.BigEndian.PutUint64(op.Key[2:], seq)
	if v := o.appendTo(op.Value[:0]); len(v) != len(op.Value) || &v[0] != &op.Value[0] {
		panic("engine: outbox size mismatch")
	}
	op.Finish()
}

func (o *outbox) appendTo(b []byte) []byte {
	b = append(b, 1, byte(len(o.devices)))
	for _, d := range o.devices {
		flags := byte(0)
		if d.accepted {
			flags |= 1
		}
		b = append(b, byte(d.device), flags, d.resets, byte(len(d.typ)))
		b = append(b, d.typ...)
		b = binary.AppendUvarint(b, uint64(len(d.ct)))
		b = append(b, d.ct...)
	}
	return b
}

var errBadOutbox = errors.New("engine: corrupt outbox record")

func decodeOutbox(b []byte) (*outbox, error) {
	if len(b) < 2 || b[0] != 1 {
		return nil, errBadOutbox
	}
	n := int(b[1])
	b = b[2:]
	o := &outbox{devices: make([]deviceState, 0, n)}
	for i := 0; i < n; i++ {
		if len(b) < 4 {
			return nil, errBadOutbox
		}
		d := deviceState{device: uint32(b[0]), accepted: b[1]&1 != 0, resets: b[2]}
		tl := int(b[3])
		b = b[4:]
		if len(b) < tl {
			return nil, errBadOutbox
		}
		d.typ = string(b[:tl])
		b = b[tl:]
		cl, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < cl {
			return nil, errBadOutbox
		}
		d.ct = append([]byte(nil), b[k:k+int(cl)]...)
		b = b[k+int(cl):]
		o.devices = append(o.devices, d)
	}
	return o, nil
}
