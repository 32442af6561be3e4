package tenant

import (
	"crypto/hmac"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/seal"
)

// Errors.
var (
	ErrNotFound     = errors.New("tenant: not found")
	ErrInvalid      = errors.New("tenant: invalid")
	ErrNumberInUse  = errors.New("tenant: phone number already registered")
	ErrUnauthorized = errors.New("tenant: unknown or revoked token")
)

// Tiers: unique recipients a business may start messaging per moving 24 h.
var Tiers = map[string]int{"250": 250, "2k": 2000, "10k": 10000, "100k": 100000, "unlimited": -1}

// Business is one tenant.
type Business struct {
	ID            string `json:"id"`
	Name          string `json:"name"`
	Tier          string `json:"tier"`
	MPS           int    `json:"mps"`
	Paused        bool   `json:"paused"`
	IdentityCheck bool   `json:"identity_check"`
	// MaxQueuedBytes is the business's share of the queue (stored record
	// bytes); 0 means the node's default share.
	MaxQueuedBytes int64 `json:"max_queued_bytes,omitempty"`
	// StopKeywords: a user's whole message equal to one of them
	// (case-insensitively) opts the user out; empty: STOP, UNSUBSCRIBE, ALTO.
	StopKeywords []string          `json:"stop_keywords,omitempty"`
	PhoneNumbers map[string]string `json:"phone_numbers"` // phone_number_id → digits
	Tokens       map[string]string `json:"tokens"`        // token_id → hex(hash)
}

// Store is safe for concurrent use; it keeps every business in memory (a few
// hundred bytes each) and writes through to Pebble.
type Store struct {
	db     *kv.DB
	sealer *seal.Sealer

	mu     sync.RWMutex
	byID   map[string]*Business
	byPN   map[string]*Business // phone_number_id → business
	byHash map[string]string    // hex(token hash) → business id
	byNum  map[string]string    // digits → phone_number_id

	// replicate, in cluster mode, stores a changed business's sealed
	// record cluster-wide before this node commits it (SetReplicator).
	replicate func(id string, sealed []byte) error
}

// SetReplicator makes every change go through f first (cluster mode: a
// replicated KV put); the other nodes apply it with ApplySealed.
func (s *Store) SetReplicator(f func(id string, sealed []byte) error) {
	s.mu.Lock()
	s.replicate = f
	s.mu.Unlock()
}

// ApplySealed stores and indexes a business record another node (or this
// one) replicated.
func (s *Store) ApplySealed(sealed []byte) error {
	plain, err := s.sealer.Open(sealed)
	if err != nil {
		return fmt.Errorf("tenant: replicated business record unreadable: %w", err)
	}
	var b Business
	if err := json.Unmarshal(plain, &b); err != nil {
		return fmt.Errorf("tenant: replicated business record corrupt: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	batch := s.db.NewBatch()
	batch.Set(bizKey(b.ID), sealed, nil)
	if err := s.db.Commit(batch, true); err != nil {
		return err
	}
	s.indexLocked(&b)
	return nil
}

func bizKey(id string) []byte { return append([]byte("tB"), id...) }

// Open loads every business.
func Open(db *kv.DB, sealer *seal.Sealer) (*Store, error) {
	s := &Store{db: db, sealer: sealer, byID: map[string]*Business{}, byPN: map[string]*Business{},
		byHash: map[string]string{}, byNum: map[string]string{}}
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte("tB"), UpperBound: []byte("tC")})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		plain, err := sealer.Open(it.Value())
		if err != nil {
			return nil, fmt.Errorf("tenant: business record unreadable: %w", err)
		}
		var b Business
		if err := json.Unmarshal(plain, &b); err != nil {
			return nil, fmt.Errorf("tenant: business record corrupt: %w", err)
		}
		s.indexLocked(&b)
	}
	return s, it.Error()
}

func (s *Store) indexLocked(b *Business) {
	if old, ok := s.byID[b.ID]; ok {
		for pn, num := range old.PhoneNumbers {
			delete(s.byPN, pn)
			delete(s.byNum, num)
		}
		for _, h := range old.Tokens {
			delete(s.byHash, h)
		}
	}
	s.byID[b.ID] = b
	for pn, num := range b.PhoneNumbers {
		s.byPN[pn] = b
		s.byNum[num] = pn
	}
	for _, h := range b.Tokens {
		s.byHash[h] = b.ID
	}
}

func (s *Store) saveLocked(b *Business) error {
	v, _ := json.Marshal(b)
	sealed := s.sealer.Seal(nil, v)
	if s.replicate != nil {
		if err := s.replicate(b.ID, sealed); err != nil {
			return err
		}
	}
	batch := s.db.NewBatch()
	batch.Set(bizKey(b.ID), sealed, nil)
	if err := s.db.Commit(batch, true); err != nil {
		return err
	}
	s.indexLocked(b)
	return nil
}

func randomID(prefix string, n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return prefix + strings.ToLower(hex.EncodeToString(b))
}

func (s *Store) hashToken(tok string) string {
	h := s.sealer.MAC([]byte("token:" + tok))
	return hex.EncodeToString(h[:])
}

// NewBusiness validates and creates a business with its phone numbers and a
// first token, which is returned in the clear this once.
func (s *Store) NewBusiness(name string, numbers []string, tier string, mps int, identityCheck bool) (*Business, string, error) {
	if strings.TrimSpace(name) == "" || len(name) > 200 {
		return nil, "", fmt.Errorf("%w: name must be 1-200 characters", ErrInvalid)
	}
	if tier == "" {
		tier = "2k"
	}
	if _, ok := Tiers[tier]; !ok {
		return nil, "", fmt.Errorf("%w: tier must be one of 250, 2k, 10k, 100k, unlimited", ErrInvalid)
	}
	if mps == 0 {
		mps = 80
	}
	if mps < 1 || (mps > 1000 && tier != "unlimited") {
		return nil, "", fmt.Errorf("%w: mps must be 1-1000 (more only for the unlimited tier)", ErrInvalid)
	}
	if len(numbers) == 0 {
		return nil, "", fmt.Errorf("%w: phone_numbers needs at least one number", ErrInvalid)
	}
	b := &Business{ID: randomID("biz_", 8), Name: name, Tier: tier, MPS: mps, IdentityCheck: identityCheck,
		PhoneNumbers: map[string]string{}, Tokens: map[string]string{}}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, raw := range numbers {
		num, err := NormalizePhone(raw)
		if err != nil {
			return nil, "", err
		}
		if _, taken := s.byNum[num]; taken {
			return nil, "", fmt.Errorf("%w: %s", ErrNumberInUse, num)
		}
		b.PhoneNumbers[randomID("pn_", 8)] = num
	}
	tok, tokID := s.newTokenLocked(b)
	if err := s.saveLocked(b); err != nil {
		return nil, "", err
	}
	return b, tok + "|" + tokID, nil
}

func (s *Store) newTokenLocked(b *Business) (token, id string) {
	raw := make([]byte, 32)
	rand.Read(raw)
	token = "hrld_" + base64.RawURLEncoding.EncodeToString(raw)
	id = randomID("tok_", 6)
	b.Tokens[id] = s.hashToken(token)
	return token, id
}

// SplitToken separates NewBusiness's "token|token_id" result.
func SplitToken(s string) (token, id string) {
	token, id, _ = strings.Cut(s, "|")
	return
}

// Authenticate returns the business a token belongs to.
func (s *Store) Authenticate(token string) (*Business, error) {
	if !strings.HasPrefix(token, "hrld_") || len(token) > 100 {
		return nil, ErrUnauthorized
	}
	h := s.hashToken(token)
	s.mu.RLock()
	defer s.mu.RUnlock()
	id, ok := s.byHash[h]
	if !ok {
		return nil, ErrUnauthorized
	}
	b := s.byID[id]
	for _, stored := range b.Tokens {
		if hmac.Equal([]byte(stored), []byte(h)) {
			return b, nil
		}
	}
	return nil, ErrUnauthorized
}

// Get returns a business by id.
func (s *Store) Get(id string) (*Business, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	b, ok := s.byID[id]
	if !ok {
		return nil, ErrNotFound
	}
	return b, nil
}

// ByPhoneNumberID returns the business owning a phone_number_id.
func (s *Store) ByPhoneNumberID(pn string) (*Business, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	b, ok := s.byPN[pn]
	if !ok {
		return nil, ErrNotFound
	}
	return b, nil
}

// Count returns the number of businesses.
// List returns every business, by id.
func (s *Store) List() []*Business {
	s.mu.RLock()
	out := make([]*Business, 0, len(s.byID))
	for _, b := range s.byID {
		out = append(out, b)
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b *Business) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func (s *Store) Count() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.byID)
}

// IdentityCheck implements engine.Directory.
func (s *Store) IdentityCheck(businessID string) bool {
	b, err := s.Get(businessID)
	return err == nil && b.IdentityCheck
}

// Update changes tier, mps or pause state (nil leaves a field alone).
// Patch is what Update changes: the fields that are set.
type Patch struct {
	Tier   *string
	MPS    *int
	Paused *bool
	// MaxQueuedBytes: 0 returns to the default share; otherwise at least
	// MinQueuedBytes.
	MaxQueuedBytes *int64
	// StopKeywords replaces the business's stop keywords (empty: the
	// defaults); at most 20, each 1-32 characters.
	StopKeywords *[]string
}

// MinQueuedBytes is the smallest share a business can be given: room for a
// few hundred messages.
const MinQueuedBytes = 64 << 10

// Update applies p to business id.
func (s *Store) Update(id string, p Patch) (*Business, error) {
	tier, mps, paused := p.Tier, p.MPS, p.Paused
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.byID[id]
	if !ok {
		return nil, ErrNotFound
	}
	b := clone(old)
	if tier != nil {
		if _, ok := Tiers[*tier]; !ok {
			return nil, fmt.Errorf("%w: tier must be one of 250, 2k, 10k, 100k, unlimited", ErrInvalid)
		}
		b.Tier = *tier
	}
	if mps != nil {
		if *mps < 1 || (*mps > 1000 && b.Tier != "unlimited") {
			return nil, fmt.Errorf("%w: mps must be 1-1000 (more only for the unlimited tier)", ErrInvalid)
		}
		b.MPS = *mps
	}
	if paused != nil {
		b.Paused = *paused
	}
	if q := p.MaxQueuedBytes; q != nil {
		if *q != 0 && *q < MinQueuedBytes {
			return nil, fmt.Errorf("%w: max_queued_bytes must be 0 (the default share) or at least %d", ErrInvalid, MinQueuedBytes)
		}
		b.MaxQueuedBytes = *q
	}
	if kw := p.StopKeywords; kw != nil {
		if len(*kw) > 20 {
			return nil, fmt.Errorf("%w: stop_keywords holds at most 20 keywords", ErrInvalid)
		}
		for _, k := range *kw {
			if n := utf8.RuneCountInString(strings.TrimSpace(k)); n < 1 || n > 32 || !utf8.ValidString(k) {
				return nil, fmt.Errorf("%w: each stop keyword must be 1-32 characters", ErrInvalid)
			}
		}
		b.StopKeywords = slices.Clone(*kw)
	}
	return b, s.saveLocked(b)
}

// AddPhoneNumber registers another number for a business.
func (s *Store) AddPhoneNumber(id, raw string) (string, error) {
	num, err := NormalizePhone(raw)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.byID[id]
	if !ok {
		return "", ErrNotFound
	}
	if _, taken := s.byNum[num]; taken {
		return "", fmt.Errorf("%w: %s", ErrNumberInUse, num)
	}
	b := clone(old)
	pn := randomID("pn_", 8)
	b.PhoneNumbers[pn] = num
	return pn, s.saveLocked(b)
}

// NewToken issues another token for a business.
func (s *Store) NewToken(id string) (token, tokenID string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.byID[id]
	if !ok {
		return "", "", ErrNotFound
	}
	b := clone(old)
	token, tokenID = s.newTokenLocked(b)
	return token, tokenID, s.saveLocked(b)
}

// RevokeToken revokes a token at once.
func (s *Store) RevokeToken(id, tokenID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.byID[id]
	if !ok {
		return ErrNotFound
	}
	if _, ok := old.Tokens[tokenID]; !ok {
		return ErrNotFound
	}
	b := clone(old)
	delete(b.Tokens, tokenID)
	return s.saveLocked(b)
}

func clone(b *Business) *Business {
	c := *b
	c.StopKeywords = slices.Clone(b.StopKeywords)
	c.PhoneNumbers = map[string]string{}
	for k, v := range b.PhoneNumbers {
		c.PhoneNumbers[k] = v
	}
	c.Tokens = map[string]string{}
	for k, v := range b.Tokens {
		c.Tokens[k] = v
	}
	return &c
}

// ErrBadPhone describes an invalid phone number.
var ErrBadPhone = errors.New("phone number must have 8-15 digits (E.164; +, spaces, dashes, dots and parentheses are ignored)")

// NormalizePhone turns "+1 (555) 000-0001" into "15550000001".
func NormalizePhone(s string) (string, error) {
	if len(s) > 40 {
		return "", ErrBadPhone
	}
	var b [40]byte
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			b[n] = c
			n++
		case c == '+' && n == 0, c == ' ', c == '-', c == '(', c == ')', c == '.':
		default:
			return "", ErrBadPhone
		}
	}
	if n < 8 || n > 15 || b[0] == '0' {
		return "", ErrBadPhone
	}
	return string(b[:n]), nil
}

// PhoneNumberID returns the phone_number_id registered for a business number.
func (s *Store) PhoneNumberID(number string) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	pn, ok := s.byNum[number]
	return pn, ok
}

// All returns every business (a snapshot).
func (s *Store) All() []*Business {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*Business, 0, len(s.byID))
	for _, b := range s.byID {
		out = append(out, b)
	}
	return out
}
