// Package sim is the platform simulator (`herald platform`): a real, separate
// fasthttp server speaking the platform contract, whose recipients are real
// libsignal devices created lazily on first key query (a million users cost
// nothing until asked for). Every envelope is decrypted; the plaintext JSON is
// checked against the envelope; (id, device) is delivered once; a device that
// sees a sender's message ids go backwards counts an ordering violation.
//
// It is a test instrument as much as a server: fault flags (latency, 429s,
// 5xx, throttling, reinstalls, decrypt_failed receipts), device-list changes
// (AddDevice, RemoveDevice) and recorded bodies (Received) let the engine's
// scenario tests check delivery on the recipients' side. Its events carry
// the ts of Options.Now (the node passes its own clock).
package sim
