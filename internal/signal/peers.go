package signal

import (
	"slices"
	"sync"

	lru "github.com/hashicorp/golang-lru/v2"
	"go.mau.fi/libsignal/state/record"
)

// The hot-state cache holds, per (business, recipient), the device list and
// the sessions of its devices in one entry: preparing a message looks the
// recipient up once for all of its devices (a cache of sessions per device
// and one of device lists took 1 + devices lookups, each a hashed map probe
// and an LRU list move, ~5 % of the warm engine's CPU).

type peerKey struct {
	biz string
	r   Recipient
}

// peer is a recipient's cached state. Only the worker holding the
// recipient's lease changes it (one at a time); the mutex keeps a stray
// concurrent caller (retention, a failed commit's Forget) memory-safe.
type peer struct {
	mu    sync.Mutex
	devs  []uint32 // the stored device list, when known
	known bool
	// noDevs: there is no stored device list (a read found none, or this
	// worker deleted it): the next lookup need not read again. A point read
	// of an absent key probes every level of the LSM (~60–180 µs measured
	// on a deep L0), and a number the platform does not know is looked up
	// on every message sent to it.
	noDevs bool
	sess   []peerSession
	// The recipient's chain record (Store.chainsLocked), once read.
	chainsLoaded bool
	chainsBad    bool // unreadable
	chains       []chainEntry
}

func (p *peer) chain(d uint32) *chainEntry {
	for i := range p.chains {
		if p.chains[i].device == d {
			return &p.chains[i]
		}
	}
	return nil
}

func (p *peer) setChain(c chainEntry) {
	if e := p.chain(c.device); e != nil {
		*e = c
		return
	}
	p.chains = append(p.chains, c)
}

func (p *peer) dropChain(d uint32) {
	p.chains = slices.DeleteFunc(p.chains, func(c chainEntry) bool { return c.device == d })
}

type peerSession struct {
	device uint32
	rec    *record.Session
}

func (p *peer) session(d uint32) *record.Session {
	for _, s := range p.sess {
		if s.device == d {
			return s.rec
		}
	}
	return nil
}

func (p *peer) setSession(d uint32, rec *record.Session) {
	for i := range p.sess {
		if p.sess[i].device == d {
			p.sess[i].rec = rec
			return
		}
	}
	p.sess = append(p.sess, peerSession{d, rec})
}

func (p *peer) dropSession(d uint32) {
	p.sess = slices.DeleteFunc(p.sess, func(s peerSession) bool { return s.device == d })
}

type peerCache struct {
	c *lru.Cache[peerKey, *peer]
}

func newPeerCache(size int) (peerCache, error) {
	c, err := lru.New[peerKey, *peer](size)
	return peerCache{c}, err
}

// get returns the recipient's entry, made (empty) when absent.
func (pc peerCache) get(biz string, r Recipient) *peer {
	k := peerKey{biz, r}
	if p, ok := pc.c.Get(k); ok {
		return p
	}
	p := &peer{}
	if old, ok, _ := pc.c.PeekOrAdd(k, p); ok {
		return old
	}
	return p
}

// peek returns the recipient's entry if cached.
func (pc peerCache) peek(biz string, r Recipient) *peer {
	p, _ := pc.c.Peek(peerKey{biz, r})
	return p
}

func (pc peerCache) remove(biz string, r Recipient) { pc.c.Remove(peerKey{biz, r}) }

// purge empties the cache.
func (pc peerCache) purge() { pc.c.Purge() }
